"""The in-process exit tests stand a FakeHost in for exitnode.host.HostSetup; it must take
what the real one takes, or every one of those tests breaks at once when HostSetup grows a
parameter (as it did for ``gro_port``)."""

from __future__ import annotations

import inspect

from exitnode.host import HostSetup
from tests.integration.l2bridge.nodes import FakeHost


def test_fake_host_takes_the_parameters_host_setup_takes() -> None:
    real = inspect.signature(HostSetup.__init__).parameters
    fake = inspect.signature(FakeHost.__init__).parameters
    assert [(p.name, p.kind) for p in fake.values()] == [(p.name, p.kind) for p in real.values()]
