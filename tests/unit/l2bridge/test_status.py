import json
import urllib.request

from l2bridge.commands import status as status_cli
from l2bridge.commands.main import main
from l2bridge.node.metrics import Metrics
from l2bridge.node.status import StatusServer


def test_status_endpoint_serves_snapshot_metrics_and_cli(capsys):
    m = Metrics("exit")
    m.counters.frames_in += 3
    m.counters.bytes_in += 180
    m.counters.drop("replay", 2)
    m.counters.rekeys += 1
    m.set_gauge("attestation_age_seconds", lambda: 12.5)
    m.set_gauge("clock_offset_seconds", lambda: None)  # unknown: left out of the scrape
    m.set_gauge("broken", lambda: 1 / 0)  # a failing reader must not break anything
    m.set_info(node_id="ab" * 32)
    server = StatusServer(m).start()
    try:
        doc = status_cli.fetch(server.url, 3)
        assert doc["role"] == "exit"
        assert doc["frames"] == {"in": 3, "out": 0}
        assert doc["drops"] == {"replay": 2}
        assert doc["gauges"]["attestation_age_seconds"] == 12.5
        assert doc["gauges"]["clock_offset_seconds"] is None
        assert doc["info"]["node_id"] == "ab" * 32

        text = urllib.request.urlopen(server.url + "/metrics", timeout=3).read().decode()
        assert 'shadowmesh_frames_total{direction="in",role="exit"} 3.0' in text
        assert 'shadowmesh_drops_total{reason="replay",role="exit"} 2.0' in text
        assert 'shadowmesh_rekeys_total{role="exit"} 1.0' in text
        assert "shadowmesh_attestation_age_seconds" in text
        assert "clock_offset" not in text
        assert "broken" not in text

        assert main(["status", "--url", server.url]) == 0
        out = capsys.readouterr().out
        assert "role      exit" in out and "replay=2" in out
        assert main(["status", "--url", server.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rekeys"] == 1
    finally:
        server.stop()


def test_status_cli_reports_unreachable_node(capsys):
    assert main(["status", "--url", "http://127.0.0.1:1", "--timeout", "1"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_unknown_path_is_404():
    server = StatusServer(Metrics("client")).start()
    try:
        try:
            urllib.request.urlopen(server.url + "/secret", timeout=3)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        else:
            raise AssertionError("expected 404")
    finally:
        server.stop()


def test_command_lists_subcommands_and_rejects_unknown(capsys):
    assert main([]) == 2
    assert "status" in capsys.readouterr().out
    assert main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
