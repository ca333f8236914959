"""The status listener: documents, health, the management API's authentication, and
robustness against idle, hung-up and oversized clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from l2bridge.commands import status as status_cli
from l2bridge.commands.main import main
from l2bridge.identity.keys import write_private_file
from l2bridge.node import status as status_mod
from l2bridge.node.config import ConfigError
from l2bridge.node.health import components
from l2bridge.node.metrics import Metrics
from l2bridge.node.status import ManagementError, StatusServer, read_token

TOKEN = b"t" * 40


def _get(url: str, token: bytes | None = None, method: str = "GET",
         body: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    where = status_cli.Target(url, token)
    return status_cli.request(where, "", method=method, body=body, timeout=5)


class FakeApi:
    def __init__(self) -> None:
        self.disconnected: list[str] = []
        self.lists: list[str] = []

    async def peers(self) -> list[dict[str, Any]]:
        return [{"device": "lan-a", "vlans": "all", "bytes_in": 5}]

    async def disconnect(self, name: str) -> int:
        self.disconnected.append(name)
        return 1 if name == "lan-a" else 0

    async def install_revocations(self, armored: str) -> dict[str, Any]:
        if "BEGIN" not in armored:
            raise ManagementError("not a revocation list")
        self.lists.append(armored)
        return {"sequence": 2, "revoked": 1, "disconnected": ["lan-a"]}

    async def reload(self) -> dict[str, Any]:
        return {"reloaded": True}


def test_status_endpoint_serves_snapshot_metrics_and_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = Metrics("exit")
    m.counters.frames_in += 3
    m.counters.bytes_in += 180
    m.counters.drop("replay", 2)
    m.counters.rekeys += 1
    m.counters.connections.update({"admitted": 1, "answered as the decoy": 4})
    m.set_gauge("attestation_age_seconds", lambda: 12.5)
    m.set_gauge("clock_offset_seconds", lambda: None)  # unknown: left out of the scrape
    m.set_gauge("broken", lambda: 1 / 0)  # a failing reader must not break anything
    m.set_gauge("clients", lambda: 2.0)
    m.set_info(node_id="ab" * 32)
    server = StatusServer(m).start()
    try:
        doc = status_cli.fetch(server.url, 3)
        assert doc["role"] == "exit"
        assert doc["frames"] == {"in": 3, "out": 0}
        assert doc["drops"] == {"replay": 2}
        assert doc["gauges"]["attestation_age_seconds"] == 12.5
        assert doc["info"]["node_id"] == "ab" * 32

        text = urllib.request.urlopen(server.url + "/metrics", timeout=3).read().decode()
        assert 'shadowmesh_frames_total{direction="in",role="exit"} 3.0' in text
        assert 'shadowmesh_drops_total{reason="replay",role="exit"} 2.0' in text
        assert "clock_offset" not in text and "broken" not in text

        logging.getLogger("test.status").warning("the chain is unreachable")
        assert main(["status", "--url", server.url]) == 0
        out = capsys.readouterr().out
        assert "role        exit" in out and "replay=2" in out
        assert "connections admitted=1, answered as the decoy=4\n" in out
        assert "clients                   2\n" in out  # an integer, not 2.0
        assert "bytes in 180 B" in out
        assert "last error" in out and "the chain is unreachable" in out
        assert main(["status", "--url", server.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rekeys"] == 1
    finally:
        server.stop()


def test_status_finds_the_listener_and_credential_in_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "admin.token"
    write_private_file(token, TOKEN.decode() + "\n")
    server = StatusServer(Metrics("exit"), token=read_token(token), api=FakeApi()).start()
    try:
        host, port = server.address
        cfg = tmp_path / "exit.yaml"
        cfg.write_text(f"status:\n  listen: {host}:{port}\n  admin_token_file: admin.token\n")
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "peers       1" in out and "lan-a" in out
    finally:
        server.stop()


def test_status_cli_reports_unreachable_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:1", "--timeout", "1"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_unknown_path_is_404() -> None:
    server = StatusServer(Metrics("client")).start()
    try:
        assert _get(server.url + "/secret")[0] == 404
    finally:
        server.stop()


def test_health_is_503_when_a_configured_component_failed() -> None:
    m = Metrics("exit")
    listening = [1.0]
    tpm = [1.0]
    m.set_gauge("tunnel_listening", lambda: listening[0])
    m.set_gauge("tpm_ok", lambda: tpm[0])
    server = StatusServer(m, health=lambda: components(m.snapshot(), atomic_time=False)).start()
    try:
        code, doc = _get(server.url + "/health")
        assert code == 200 and doc["status"] == "ok"
        assert doc["components"]["chain"]["state"] == "off"  # not configured
        tpm[0] = 0.0
        code, doc = _get(server.url + "/health")
        assert code == 503 and doc["components"]["tpm"]["state"] == "failed"
        tpm[0], listening[0] = 1.0, 0.0
        assert _get(server.url + "/health")[0] == 503
    finally:
        server.stop()


def test_health_components_from_gauges() -> None:
    def verdicts(gauges: dict[str, float | None], atomic: bool = True) -> dict[str, str]:
        snap = {"role": "client", "gauges": gauges, "info": {}}
        return {c.name: c.state for c in components(snap, atomic_time=atomic)}

    assert verdicts({"connected": 0.0})["tunnel"] == "failed"
    assert verdicts({"connected": 1.0, "clock_mode": 3.0})["clock"] == "failed"
    assert verdicts({"connected": 1.0, "clock_mode": 2.0})["clock"] == "degraded"
    assert verdicts({"connected": 1.0, "clock_mode": 2.0}, atomic=False)["clock"] == "ok"
    assert verdicts({"registry_state": 2.0})["chain"] == "failed"
    assert verdicts({"registry_state": 1.0})["chain"] == "ok"


def test_management_needs_the_admin_credential() -> None:
    api = FakeApi()
    server = StatusServer(Metrics("exit"), token=TOKEN, api=api).start()
    try:
        url = server.url
        assert _get(url + "/peers")[0] == 401
        assert _get(url + "/peers", b"x" * 40)[0] == 401
        assert _get(url + "/peers/lan-a/disconnect", b"x" * 40, "POST", b"")[0] == 401
        assert api.disconnected == []
        code, doc = _get(url + "/peers", TOKEN)
        assert code == 200 and doc["peers"][0]["device"] == "lan-a"
        assert _get(url + "/peers/lan-a/disconnect", TOKEN, "POST", b"")[0] == 200
        assert _get(url + "/peers/nobody/disconnect", TOKEN, "POST", b"")[0] == 404
        assert _get(url + "/peers/lan-a/disconnect", TOKEN)[0] == 405  # GET must not act
        assert api.disconnected == ["lan-a", "nobody"]
        code, doc = _get(url + "/revocations", TOKEN, "POST", b"garbage")
        assert code == 400 and doc["error"] == "not a revocation list"
        assert _get(url + "/reload", TOKEN, "POST", b"")[1] == {"reloaded": True}
        # /status stays open on loopback; /health and /metrics always
        assert _get(url + "/status")[0] == 200
    finally:
        server.stop()


def test_a_non_loopback_listener_needs_a_token_and_guards_status(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"status\.admin_token_file"):
        StatusServer(Metrics("exit"), "0.0.0.0", 0)
    server = StatusServer(Metrics("exit"), "0.0.0.0", 0, token=TOKEN).start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}"
        assert _get(url + "/status")[0] == 401
        assert _get(url + "/status", TOKEN)[0] == 200
        assert _get(url + "/health")[0] == 200
    finally:
        server.stop()
    loose = tmp_path / "token"
    loose.write_text("y" * 40)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"status\.admin_token_file: .*permissions"):
        read_token(loose)


def test_a_bind_failure_is_one_line_naming_the_setting() -> None:
    server = StatusServer(Metrics("exit")).start()
    try:
        with pytest.raises(ConfigError, match=r"status.listen \(127.0.0.1:\d+\): .*in use"):
            StatusServer(Metrics("exit"), *server.address)
    finally:
        server.stop()
    with pytest.raises(ConfigError, match=r"status.listen \(192.0.2.77:9470\)"):
        StatusServer(Metrics("exit"), "192.0.2.77", 9470, token=TOKEN)


def test_idle_and_hung_up_clients_cost_no_thread_and_print_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_mod, "REQUEST_TIMEOUT_S", 1.0)
    server = StatusServer(Metrics("exit")).start()
    idle: list[socket.socket] = []
    threads = threading.active_count()
    try:
        host, port = server.address
        for _ in range(status_mod.MAX_CONNECTIONS // 2):
            idle.append(socket.create_connection((host, port), timeout=5))
        assert threading.active_count() == threads  # one thread serves them all
        assert _get(server.url + "/status")[0] == 200  # still answers
        # a client that sends a request and hangs up before the answer
        for _ in range(10):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        # an oversized body is refused, not read
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"POST /reload HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
            assert b" 413 " in s.recv(200)
        # idle connections are closed after the request timeout
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""
        assert _get(server.url + "/status")[0] == 200
    finally:
        for s in idle:
            s.close()
        server.stop()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_command_lists_subcommands_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "status" in out and "init" in out and "peers" in out
    assert main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_management_call_runs_on_the_nodes_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[asyncio.AbstractEventLoop] = []

    class Api(FakeApi):
        async def peers(self) -> list[dict[str, Any]]:
            seen.append(asyncio.get_running_loop())
            return []

    server = StatusServer(Metrics("exit"), api=Api(), api_loop=loop).start()
    try:
        assert _get(server.url + "/peers")[1] == {"peers": []}
        assert seen == [loop]
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_web_pages_and_unauthenticated_bodies_are_refused_before_anything_is_read() -> None:
    api = FakeApi()
    server = StatusServer(Metrics("exit"), api=api).start()  # loopback, no token: local use
    host, port = server.address
    try:
        for head, code in (
            # a cross-site POST from a page in the operator's browser
            (b"POST /peers/lan-a/disconnect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Origin: http://evil.example\r\nContent-Length: 0\r\n\r\n", b" 403 "),
            # DNS rebinding: a name that resolves to 127.0.0.1
            (b"GET /peers HTTP/1.1\r\nHost: evil.example:9470\r\n\r\n", b" 403 "),
            (b"GET /peers HTTP/1.1\r\nHost: localhost:9470\r\n\r\n", b" 200 "),
        ):  # fmt: skip
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(head)
                assert code in s.recv(200)
        assert api.disconnected == []
    finally:
        server.stop()
    server = StatusServer(Metrics("exit"), token=TOKEN, api=api).start()
    host, port = server.address
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            # declares a body but sends none: refused at once, not waited for
            s.sendall(b"POST /revocations HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
            assert b" 401 " in s.recv(200)
        assert api.lists == []
    finally:
        server.stop()


def test_a_server_never_started_stops_cleanly() -> None:
    server = StatusServer(Metrics("exit"))
    host, port = server.address
    server.stop()
    with socket.socket() as s:  # the port was released: nothing listens there any more
        assert s.connect_ex((host, port)) != 0


def test_idle_connections_at_the_limit_make_room_for_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_mod, "MAX_CONNECTIONS", 8)
    server = StatusServer(Metrics("exit")).start()
    host, port = server.address
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(8)]
    try:
        for _ in range(5):  # each request takes the slot of the longest-waiting idle one
            assert _get(server.url + "/health")[0] == 200
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""  # the oldest idle connection was closed for it
    finally:
        for s in idle:
            s.close()
        server.stop()
