"""The exit's front door on the CPU: screening a request head fed one byte at a time
(the old gate re-scanned the whole buffer per segment: 87 ms for a 6.6 KB head), and
the built-in decoy answering kept-alive requests. Sans-I/O, no sockets.

Prints one line of JSON. Bounded: ROUNDS rounds per figure, each a few ms.
    python3 bench/frontdoor.py

Figures (CPU seconds via time.process_time, min/median/max over the rounds):
- gate_bytewise_ms[size]: a head of ``size`` bytes fed to the gate a byte at a time;
- gate_bytewise_us_per_byte[size]: the same per byte (flat across sizes = linear);
- gate_oneshot_us[size]: the same head in one segment;
- decoy_keepalive_requests_per_s: GETs answered on one kept-alive DecoyConnection.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2bridge.transport.decoy import DecoyConnection, DecoySite, DecoyTimeouts
from l2bridge.transport.gate import Gate, Refuse
from l2bridge.transport.headers import BROWSER_USER_AGENT

ROUNDS = 7
SIZES = (1650, 3300, 6600, 13200)
DECOY_REQUESTS = 900  # under keepalive_requests (1000), after which nginx closes
NOW = 1_800_000_000.0


def head_of(size: int) -> bytes:
    """A plausible browser request padded with cookie lines to ``size`` bytes (each
    under nginx's 8 KiB line limit, so the 6.6 KB head has one 6 KB line)."""
    head = (
        "GET /ws HTTP/1.1\r\nHost: exit.example\r\n"
        f"User-Agent: {BROWSER_USER_AGENT}\r\nAccept-Language: en-US,en;q=0.9\r\n"
    ).encode()
    rest = size - len(head) - 2  # the empty line ends the head
    while rest > 0:
        line = min(rest, 8000)  # one long cookie line, as in the 6.6 KB head
        if 0 < rest - line < 12:
            line = rest - 12  # leave room for one more short line
        head += b"Cookie: " + b"c" * (line - 10) + b"\r\n"
        rest -= line
    return head + b"\r\n"


def cpu(work) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def bytewise(data: bytes) -> None:
    gate = Gate(ws_path="/ws", verifier=None)
    for i in range(len(data)):
        decision = gate.feed(data[i : i + 1], NOW)
    assert isinstance(decision, Refuse) and decision.data == data


def oneshot(data: bytes) -> None:
    assert isinstance(Gate(ws_path="/ws", verifier=None).feed(data, NOW), Refuse)


def decoy_requests() -> None:
    conn = DecoyConnection(DecoySite.builtin(), DecoyTimeouts(), NOW)
    request = b"GET / HTTP/1.1\r\nHost: exit.example\r\nAccept: */*\r\n\r\n"
    for _ in range(DECOY_REQUESTS):
        conn.receive(request, NOW)
        while conn.data_to_send(1 << 16, NOW):
            pass
    assert conn.closing is None


def spread(samples: list[float], scale: float, digits: int = 2) -> dict[str, float]:
    return {
        "min": round(min(samples) * scale, digits),
        "median": round(statistics.median(samples) * scale, digits),
        "max": round(max(samples) * scale, digits),
    }


def main() -> None:
    result: dict[str, object] = {"rounds": ROUNDS}
    bytewise_ms, per_byte, oneshot_us = {}, {}, {}
    for size in SIZES:
        data = head_of(size)
        assert len(data) == size
        times = [cpu(lambda data=data: bytewise(data)) for _ in range(ROUNDS)]
        bytewise_ms[str(size)] = spread(times, 1e3)
        per_byte[str(size)] = spread(times, 1e6 / size, 3)
        single = [cpu(lambda data=data: oneshot(data)) for _ in range(ROUNDS)]
        oneshot_us[str(size)] = spread(single, 1e6, 1)
    result["gate_bytewise_ms"] = bytewise_ms
    result["gate_bytewise_us_per_byte"] = per_byte
    result["gate_oneshot_us"] = oneshot_us
    decoy = [cpu(decoy_requests) for _ in range(ROUNDS)]
    result["decoy_keepalive_requests_per_s"] = {
        "min": round(DECOY_REQUESTS / max(decoy)),
        "median": round(DECOY_REQUESTS / statistics.median(decoy)),
        "max": round(DECOY_REQUESTS / min(decoy)),
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
