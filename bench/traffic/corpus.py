"""Labelled corpus generator: Chromium WebSocket sessions and ShadowMesh tunnels, captured
with tcpdump on the same path (run as root; everything is made and removed by the script).

    python bench/traffic/corpus.py --out DIR [--flows 20] [--seconds 6] [--modes all]

One lab (lab.topology: lan-a, client, exit, lan-b). The capture point is the client's
underlay interface (wan0), where a censor between user and server sits; segmentation
offloads are off there so packets have wire sizes.

- browser: headless Chromium (Debian's) in the client namespace opens the app's pages
  (bench/traffic/app.py: chat, feed, edit, upload) from nginx with TLS in the exit
  namespace, which proxies /ws/ to the app's WebSocket backend: ``--flows`` WebSocket
  sessions per page kind.
- tunnel: ``shadowmesh exit`` (its own TLS, as docs/fallback.md deploys it) and
  ``shadowmesh client`` (wss://) carrying bench/traffic/workloads.py (browse, bulk,
  interactive, idle) from lan-a to lan-b; a fresh client (one TLS flow) per session,
  ``--flows`` sessions per workload per shaping mode. The client's LAN side (lan0) is
  captured too, for the payload the tunnel carried.

Writes DIR/*.pcap and DIR/manifest.json (each session's label, mode, kind and time window)
for bench/classify.py. Prints one line of JSON: flows made per class and the time taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import l2_shadowmesh  # noqa: E402
from bench.traffic import app  # noqa: E402
from hardware import netns  # noqa: E402
from hardware.netns import Lab, Namespace  # noqa: E402
from l2bridge.commands.initfiles import write_private_tls  # noqa: E402
from lab import provision, topology  # noqa: E402

FRONT = "front.example"  # the server name both Chromium and the client use (SNI)
WS_PORT = 8443  # nginx: the app's WebSockets
PAGE_PORT = 8444  # nginx: the app's pages (their flows are not WebSocket sessions)
TUNNEL_PORT = 443
APP_PORT = 9001
WORKLOADS = ("browse", "bulk", "interactive", "idle")
# Shaping modes: the obfuscation settings each one runs with (docs/configuration.md).
MODES: dict[str, dict[str, object]] = {
    "baseline": {},
    "sizes": {"shaping": "sizes"},
    "browser": {"shaping": "browser"},
    "cover": {"cover_traffic": "aggressive"},
    "chatter": {"lan_chatter": "aggregate"},
    "combined": {"shaping": "browser", "cover_traffic": "on", "lan_chatter": "aggregate"},
    # combined, with the client's ClientHello made by curl_cffi (endpoints.tls_impersonate)
    "impersonate": {
        "shaping": "browser",
        "cover_traffic": "on",
        "lan_chatter": "aggregate",
        "tls_impersonate": "chrome",
    },
}
ENDPOINT_SETTINGS = ("tls_impersonate",)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    f"--host-resolver-rules=MAP {FRONT} {topology.EXIT_WAN}",
)
NGINX = """daemon off;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 768; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    gzip on;
    server_tokens off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # As Debian's stock /etc/nginx/nginx.conf has them.
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        {listen}
        root {root};
        location / {{ try_files $uri $uri/ =404; }}
        location /ws/ {{
            proxy_pass http://127.0.0.1:{app_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def offloads_off(ns: Namespace, dev: str) -> None:
    ns.run(["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"], check=False)


@contextlib.contextmanager
def nginx(
    lab: Lab, ns: Namespace, tmp: Path, *, listen: str, root: Path, tls: tuple[Path, Path]
) -> Iterator[None]:
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp))
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX.format(
            prefix=prefix, cert=tls[0], key=tls[1], listen=listen, root=root, app_port=APP_PORT
        )
    )
    proc = lab.spawn(ns, ["nginx", "-c", str(conf), "-p", str(prefix)])
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()}")
    try:
        yield
    finally:
        lab.stop(proc)


@contextlib.contextmanager
def capture(lab: Lab, ns: Namespace, dev: str, path: Path, expr: str) -> Iterator[None]:
    proc = lab.spawn(ns, ["tcpdump", "-i", dev, "-n", "-s", "2048", "-U", "-w", str(path), expr])
    time.sleep(1.0)  # tcpdump is listening before the first packet
    try:
        yield
    finally:
        time.sleep(0.5)
        lab.stop(proc, signal.SIGINT)


@contextlib.contextmanager
def hosts_file(ns: Namespace, line: str) -> Iterator[None]:
    """``ip netns exec`` bind-mounts /etc/netns/NAME/hosts over /etc/hosts."""
    directory = Path("/etc/netns") / ns.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n{line}\n")
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_site(root: Path) -> None:
    """lan-b's web site for the tunnel workloads."""
    root.mkdir(parents=True, exist_ok=True)
    rnd = os.urandom
    (root / "index.html").write_bytes(
        b"<html><body>" + rnd(8000).hex().encode() + b"</body></html>"
    )
    (root / "long.html").write_bytes(
        b"<html><body>" + rnd(90000).hex().encode() + b"</body></html>"
    )
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>" + rnd(3000).hex().encode())
    (root / "style.css").write_bytes(b"body{}" * 800)
    (root / "app.js").write_bytes(rnd(60000))
    (root / "logo.png").write_bytes(rnd(12000))
    (root / "photo.jpg").write_bytes(rnd(300000))
    (root / "bulk.bin").write_bytes(rnd(200 * 1024 * 1024 // 8))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def browser_phase(  # noqa: PLR0917
    lab: Lab, topo: topology.Topology, out: Path, tmp: Path, flows: int, seconds: float, conc: int
) -> list[dict[str, object]]:
    done = tmp / "app-done.txt"
    done.touch()
    sessions: list[dict[str, object]] = []
    backend = lab.spawn(
        topo.exit,
        [sys.executable, "-m", "bench.traffic.app", "--port", str(APP_PORT), "--done", str(done)],
    )
    pcap = out / "browser.pcap"
    try:
        with capture(lab, topo.client, "wan0", pcap, f"tcp port {WS_PORT}"):
            for kind in app.KINDS:
                before = done.read_text().count(kind + "\n")
                profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
                url = (
                    f"https://{FRONT}:{PAGE_PORT}/{kind}.html?n={flows}&conc={conc}"
                    f"&dur={seconds}&ws={FRONT}:{WS_PORT}"
                )
                start = time.time()
                proc = lab.spawn(
                    topo.client, ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url]
                )
                limit = time.monotonic() + flows * seconds * 3 / conc + 60
                while time.monotonic() < limit and proc.poll() is None:
                    if done.read_text().count(kind + "\n") - before >= flows:
                        break
                    time.sleep(0.5)
                finished = done.read_text().count(kind + "\n") - before
                lab.stop(proc)
                shutil.rmtree(profile, ignore_errors=True)
                log(f"browser {kind}: {finished} sessions in {time.time() - start:.0f} s")
                sessions.append(
                    {
                        "label": "browser",
                        "mode": "browser",
                        "kind": kind,
                        "pcap": pcap.name,
                        "start": start,
                        "end": time.time(),
                        "port": WS_PORT,
                    }
                )
    finally:
        lab.stop(backend)
    return sessions


def tunnel_configs(
    tmp: Path, tls: tuple[Path, Path, Path], mode: dict[str, object], name: str
) -> tuple[Path, Path]:
    files = provision.provision(
        tmp / f"sm-{name}", exit_host=topology.EXIT_WAN, bridge=topology.BRIDGE, port=TUNNEL_PORT
    )
    ca, cert, key = tls
    exit_doc = yaml.safe_load(files.exit_config.read_text())
    exit_doc["endpoints"].update(tls_cert=str(cert), tls_key=str(key))
    exit_doc["obfuscation"] = {
        k: v for k, v in mode.items() if k != "lan_chatter" and k not in ENDPOINT_SETTINGS
    }
    files.exit_config.write_text(yaml.safe_dump(exit_doc))
    client_path = files.client_configs["client"]
    client_doc = yaml.safe_load(client_path.read_text())
    client_doc["endpoints"].update(connect=f"wss://{FRONT}:{TUNNEL_PORT}/ws", tls_ca=str(ca))
    client_doc["obfuscation"] = {k: v for k, v in mode.items() if k not in ENDPOINT_SETTINGS}
    client_doc["endpoints"].update({k: v for k, v in mode.items() if k in ENDPOINT_SETTINGS})
    client_path.write_text(yaml.safe_dump(client_doc))
    return files.exit_config, client_path


def wait_established(ns: Namespace, timeout: float) -> bool:
    def up() -> bool:
        out = ns.run(
            ["ss", "-Htn", "state", "established", f"( dport = :{TUNNEL_PORT} )"], check=False
        )
        return bool(out.strip())

    return netns.wait_for(up, timeout, 0.1)


def tunnel_phase(  # noqa: PLR0917
    lab: Lab,
    topo: topology.Topology,
    out: Path,
    tmp: Path,
    tls: tuple[Path, Path, Path],
    modes: list[str],
    flows: int,
    seconds: float,
    sessions: list[dict[str, object]],
) -> None:
    """Appends each session to ``sessions`` as it ends (kept when interrupted)."""
    for name in modes:
        exit_cfg, client_cfg = tunnel_configs(tmp, tls, MODES[name], name)
        pcap, lan = out / f"tunnel-{name}.pcap", out / f"lan-{name}.pcap"
        exit_proc = lab.spawn(topo.exit, l2_shadowmesh._command("exit", exit_cfg, None))
        time.sleep(2.0)
        try:
            with (
                capture(lab, topo.client, "wan0", pcap, f"tcp port {TUNNEL_PORT}"),
                capture(lab, topo.client, "lan0", lan, ""),
            ):
                for i in range(flows * len(WORKLOADS)):
                    kind = WORKLOADS[i % len(WORKLOADS)]
                    start = time.time()
                    client = lab.spawn(
                        topo.client, l2_shadowmesh._command("client", client_cfg, None)
                    )
                    if not wait_established(topo.client, 20):
                        lab.stop(client)
                        log(f"tunnel {name} {kind}: the client did not connect; skipped")
                        continue
                    time.sleep(1.0)  # the handshake completes
                    rtt = tmp / f"rtt-{name}-{i}.json"
                    began = time.time()
                    topo.lan_a.run(
                        [
                            sys.executable,
                            "-m",
                            "bench.traffic.workloads",
                            kind,
                            "--seconds",
                            str(seconds),
                            "--rtt",
                            str(rtt),
                        ],
                        check=False,
                        timeout=seconds + 30,
                    )
                    ended = time.time()
                    lab.stop(client, signal.SIGINT)
                    entry: dict[str, object] = {
                        "label": "tunnel",
                        "mode": name,
                        "kind": kind,
                        "pcap": pcap.name,
                        "lan_pcap": lan.name,
                        "start": start,
                        "end": time.time(),
                        "work_start": began,
                        "work_end": ended,
                        "port": TUNNEL_PORT,
                    }
                    if rtt.exists():
                        entry["rtt_ms"] = json.loads(rtt.read_text())
                    sessions.append(entry)
                    time.sleep(0.3)
                log(f"tunnel {name}: {flows * len(WORKLOADS)} sessions")
        finally:
            lab.stop(exit_proc, signal.SIGINT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--flows", type=int, default=20, help="sessions per class (kind, mode)")
    parser.add_argument(
        "--browser-flows", type=int, help="sessions per page kind (default --flows)"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="a session's mean length")
    parser.add_argument("--concurrent", type=int, default=4, help="browser sessions at once")
    parser.add_argument("--modes", default="all", help="comma-separated shaping modes, or all")
    parser.add_argument("--skip-browser", action="store_true")
    args = parser.parse_args()
    modes = list(MODES) if args.modes == "all" else args.modes.split(",")
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m}; one of {', '.join(MODES)}")
    for tool in ("chromium", "tcpdump", "nginx", "ethtool", "curl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: run hardware/setup/install.sh --bench")
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="traffic-corpus-"))
    tmp.chmod(0o755)
    manifest: list[dict[str, object]] = []
    try:
        with Lab() as lab:
            topo = topology.build(lab)
            for ns in (topo.client, topo.exit):
                offloads_off(ns, "wan0")
            tls = write_private_tls(tmp / "tls", FRONT)
            pages = tmp / "pages"
            app.write_pages(pages)
            site = tmp / "site"
            make_site(site)
            server = lab.spawn(
                topo.lan_b, [sys.executable, "-m", "bench.traffic.workloads", "serve"]
            )
            listen = (
                f"listen {topology.EXIT_WAN}:{WS_PORT} ssl; "
                f"listen {topology.EXIT_WAN}:{PAGE_PORT} ssl;"
            )
            with (
                hosts_file(topo.client, f"{topology.EXIT_WAN} {FRONT}"),
                nginx(lab, topo.exit, tmp, listen=listen, root=pages, tls=(tls[1], tls[2])),
                nginx(
                    lab,
                    topo.lan_b,
                    tmp,
                    listen=f"listen {topology.HOST_B}:443 ssl;",
                    root=site,
                    tls=(tls[1], tls[2]),
                ),
            ):
                if not args.skip_browser:
                    manifest += browser_phase(
                        lab,
                        topo,
                        args.out,
                        tmp,
                        args.browser_flows or args.flows,
                        args.seconds,
                        args.concurrent,
                    )
                tunnel_phase(
                    lab, topo, args.out, tmp, tls, modes, args.flows, args.seconds, manifest
                )
            lab.stop(server)
    finally:
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    for s in manifest:
        key = f"{s['label']}:{s['mode']}"
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps({"sessions": counts, "seconds": round(time.time() - began)}))


if __name__ == "__main__":
    main()
