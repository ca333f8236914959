"""A real nginx (Debian's package) for the front-door tests: started by the test with a
generated config, serving a generated static directory on 127.0.0.1, stopped after.

The config is Debian 1.22's stock nginx.conf + default site as far as a static site is
concerned (``gzip on``, mime.types, ``try_files $uri $uri/ =404``) plus ``server_tokens
off``, with the timeouts the test asks for, which the exit under test mirrors.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONF = """
daemon off;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 768; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    gzip on;
    server_tokens off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_header_timeout {header};
    keepalive_timeout {keepalive};
    send_timeout {send};
    server {{
        listen 127.0.0.1:{port};
        {tls_listen}
        root {root};
        index index.html;
        location / {{ try_files $uri $uri/ =404; }}
    }}
}}
"""
TLS_LISTEN = """listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};"""

WELCOME = (Path(__file__).parent / "welcome.html").read_bytes()


@dataclass(frozen=True)
class Nginx:
    port: int
    root: Path
    tls_port: int | None = None  # the same site over TLS, when a certificate was given


def make_site() -> Path:
    """A static site both servers serve: the welcome page, a CSS file, a 1 MiB file, a
    200 KB HTML page (gzip in several chunks), a directory with an index and an empty
    directory. Readable by nginx's worker."""
    root = Path(tempfile.mkdtemp(prefix="decoy-site-"))
    root.chmod(0o755)
    (root / "index.html").write_bytes(WELCOME)
    (root / "style.css").write_bytes(b"body { color: #333; }\n")
    (root / "big.bin").write_bytes(random.Random(7).randbytes(1 << 20))
    words = random.Random(8)
    page = " ".join(f"word{words.randrange(100000)}" for _ in range(20000))
    (root / "long.html").write_text(f"<html><body><p>{page}</p></body></html>\n")
    (root / "docs").mkdir(mode=0o755)
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>\n")
    (root / "empty").mkdir(mode=0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_nginx(
    root: Path,
    *,
    header: float,
    keepalive: float,
    send: float,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Nginx]:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        # A failure, not a skip: without the reference server the probe comparisons would
        # silently stop testing anything.
        pytest.fail("nginx is not installed: run hardware/setup/install.sh (nginx-light)")
    prefix = Path(tempfile.mkdtemp(prefix="nginx-"))
    prefix.chmod(0o755)
    port = free_port()
    tls_port = free_port() if tls is not None else None
    tls_listen = "" if tls is None else TLS_LISTEN.format(port=tls_port, cert=tls[0], key=tls[1])
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        CONF.format(
            user=user,
            prefix=prefix,
            port=port,
            tls_listen=tls_listen,
            root=root,
            header=_seconds(header),
            keepalive=_seconds(keepalive),
            send=_seconds(send),
        )
    )
    proc = subprocess.Popen(
        [binary, "-c", str(prefix / "nginx.conf"), "-p", str(prefix)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Nginx(port, root, tls_port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(prefix, ignore_errors=True)


def _seconds(value: float) -> str:
    # nginx takes whole seconds or milliseconds ("1500ms").
    return f"{int(value * 1000)}ms"
