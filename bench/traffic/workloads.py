"""What a user does through the tunnel, run in the lab's LAN namespaces (lan-a is the
user's side, lan-b the far side): ``python -m bench.traffic.workloads KIND --seconds S``.

- browse: HTTPS page visits to lan-b's nginx (a page and its assets, think times between);
- bulk: one large HTTPS download from lan-b's nginx for the whole time;
- interactive: an SSH-like session: keystrokes of SSH-packet size at typing speed, each
  echoed, and a command's output after "enter"; writes each keystroke's echo time (ms)
  to ``--rtt`` when given;
- idle: no traffic of the user's own, only LAN chatter: ARP requests, mDNS announcements
  and SSDP NOTIFYs at their usual irregular periods;
- serve: lan-b's side of ``interactive`` (an echo/output server on port 2222).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import subprocess
import time
from pathlib import Path

SERVER = "10.77.0.2"
ECHO_PORT = 2222
PAGES = ("index.html", "long.html", "docs/index.html")
ASSETS = ("style.css", "app.js", "logo.png", "photo.jpg")
SSH_PACKET = 36  # an SSH keystroke packet's payload (encrypted, padded), as on the wire


def _curl(url: str, max_time: float) -> None:
    subprocess.run(
        ["curl", "-sk", "-o", "/dev/null", "--max-time", f"{max(max_time, 0.5):.1f}", url],
        check=False,
        timeout=max_time + 5,
    )


def browse(seconds: float, rng: random.Random) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        page = rng.choice(PAGES)
        assets = rng.sample(ASSETS, rng.randint(1, len(ASSETS)))
        urls = [f"https://{SERVER}/{p}" for p in (page, *assets)]
        # One curl per visit: keep-alive over the page and its assets, as a browser does.
        subprocess.run(
            [
                "curl",
                "-sk",
                "--max-time",
                f"{max(end - time.monotonic(), 0.5):.1f}",
                *[a for u in urls for a in ("-o", "/dev/null", u)],
            ],
            check=False,
            timeout=seconds + 5,
        )
        time.sleep(rng.uniform(0.3, 1.5))


def bulk(seconds: float, rng: random.Random) -> None:
    _curl(f"https://{SERVER}/bulk.bin", seconds)


def interactive(seconds: float, rng: random.Random, rtt_file: Path | None) -> None:
    rtts: list[float] = []
    end = time.monotonic() + seconds
    with socket.create_connection((SERVER, ECHO_PORT), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < end:
            for _ in range(rng.randint(2, 15)):
                sent = time.monotonic()
                s.sendall(b"k" * SSH_PACKET)
                got = 0
                while got < SSH_PACKET:
                    got += len(s.recv(65536))
                rtts.append((time.monotonic() - sent) * 1000)
                time.sleep(rng.uniform(0.08, 0.3))
            s.sendall(b"\n" * SSH_PACKET)  # "enter": the command's output comes back
            want = struct.unpack(">I", _exact(s, 4))[0]
            _exact(s, want)
            time.sleep(rng.expovariate(1 / 1.5))
    if rtt_file is not None:
        rtt_file.write_text(json.dumps(rtts))


def _exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def serve() -> None:
    rng = random.Random()
    with socket.create_server(("0.0.0.0", ECHO_PORT), reuse_port=True) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    while True:
                        data = _exact(conn, SSH_PACKET)
                        if data[:1] == b"\n":
                            out = rng.randbytes(rng.randint(100, 4000))
                            conn.sendall(struct.pack(">I", len(out)) + out)
                        else:
                            conn.sendall(data)
                except (ConnectionError, OSError):
                    continue


def _arp_request(target: str, mac: bytes, ip: str) -> bytes:
    eth = b"\xff" * 6 + mac + b"\x08\x06"
    arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton(ip)
    return eth + arp + b"\x00" * 6 + socket.inet_aton(target) + b"\x00" * 18


def idle(seconds: float, rng: random.Random, iface: str = "eth0") -> None:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((iface, 0))
    mac = raw.getsockname()[4]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    end = time.monotonic() + seconds
    name = f"host-{rng.randint(100, 999)}"
    events = [(rng.uniform(0, 2), "arp"), (rng.uniform(0, 3), "mdns"), (rng.uniform(0, 5), "ssdp")]
    start = time.monotonic()
    while events:
        events.sort()
        at, kind = events.pop(0)
        if start + at > end:
            break
        time.sleep(max(0.0, start + at - time.monotonic()))
        if kind == "arp":
            raw.send(_arp_request(f"10.77.0.{rng.randint(3, 254)}", mac, "10.77.0.1"))
            events.append((at + rng.uniform(1, 8), "arp"))
        elif kind == "mdns":
            record = name.encode() + b"\x05local\x00" + rng.randbytes(rng.randint(40, 300))
            udp.sendto(
                b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00" + record, ("224.0.0.251", 5353)
            )
            events.append((at + rng.choice((1, 2, 4, 8, 20)) * rng.uniform(0.9, 1.1), "mdns"))
        else:
            notify = (
                "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\n"
                f"NTS: ssdp:alive\r\nUSN: uuid:{rng.randbytes(16).hex()}\r\n\r\n"
            )
            udp.sendto(notify.encode(), ("239.255.255.250", 1900))
            events.append((at + rng.uniform(3, 15), "ssdp"))
    raw.close()
    udp.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("browse", "bulk", "interactive", "idle", "serve"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rtt", type=Path)
    args = parser.parse_args()
    rng = random.Random()
    if args.kind == "serve":
        serve()
    elif args.kind == "browse":
        browse(args.seconds, rng)
    elif args.kind == "bulk":
        bulk(args.seconds, rng)
    elif args.kind == "interactive":
        interactive(args.seconds, rng, args.rtt)
    else:
        idle(args.seconds, rng)


if __name__ == "__main__":
    main()
