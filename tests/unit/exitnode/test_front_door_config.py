import pytest

from exitnode.errors import ExitConfigError
from exitnode.server import load_fallback
from l2bridge.node.config import config_from_mapping


def test_fallback_must_not_be_the_exit_itself():
    loop = config_from_mapping({"endpoints": {"listen": "0.0.0.0:443", "fallback": "0.0.0.0:443"}})
    with pytest.raises(ExitConfigError, match=r"endpoints\.fallback"):
        load_fallback(loop)
    good = config_from_mapping(
        {"endpoints": {"listen": "0.0.0.0:443", "fallback": "127.0.0.1:8080"}}
    )
    assert load_fallback(good) == ("127.0.0.1", 8080)
