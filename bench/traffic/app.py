"""The WebSocket web app the browser corpus drives: four pages that use WebSockets the way
real sites do, and their backend (python websockets, behind nginx's TLS).

- chat: a chat room: history on join, the user's messages (human typing gaps), typing
  indicators, other members' messages pushed by the server;
- feed: a live dashboard: a snapshot on subscribe, then updates pushed every 0.1-0.8 s,
  with the page's heartbeat every 2 s;
- edit: collaborative editing: the document on join, one operation per keystroke in typing
  bursts, the server's acknowledgement of each and other editors' operations;
- upload: a large file sent in 64 KiB binary chunks, the server acknowledging progress.

The page (``/<kind>.html?n=..&conc=..&dur=..``) runs ``n`` sessions, ``conc`` at a time,
each about ``dur`` seconds (x0.5..1.5) then closing normally. The backend appends one line
per finished session to ``--done`` so the driver knows when the page is through.

Run: ``python -m bench.traffic.app --port 9001 --done FILE`` (the driver does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

KINDS = ("chat", "feed", "edit", "upload")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{kind}</title></head>
<body><h1>{kind}</h1><div id="log"></div>
<script>const kind = "{kind}";</script><script src="/page.js"></script></body></html>
"""
SCRIPT = Path(__file__).with_name("page.js")


def write_pages(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        (root / f"{kind}.html").write_text(PAGE.format(kind=kind))
    (root / "index.html").write_text("<!doctype html><title>app</title><p>app</p>\n")
    (root / "page.js").write_text(SCRIPT.read_text())
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _blob(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + " ", k=n))


async def _pusher(ws: ServerConnection, rng: random.Random, kind: str) -> None:
    """What other users / the backend push on their own."""
    while True:
        if kind == "feed":
            await asyncio.sleep(rng.uniform(0.1, 0.8))
            rows = [
                {"sym": _blob(rng, 4), "px": round(rng.uniform(1, 500), 2)}
                for _ in range(rng.randint(1, 12))
            ]
            await ws.send(json.dumps({"type": "update", "rows": rows}))
        elif kind == "chat":
            await asyncio.sleep(rng.expovariate(0.7))
            await ws.send(
                json.dumps(
                    {
                        "type": "message",
                        "from": "u" + str(rng.randint(1, 999)),
                        "text": _blob(rng, rng.randint(5, 200)),
                    }
                )
            )
        elif kind == "edit":
            await asyncio.sleep(rng.expovariate(2.0))
            await ws.send(
                json.dumps(
                    {
                        "type": "remote-op",
                        "pos": rng.randint(0, 5000),
                        "insert": _blob(rng, rng.randint(1, 3)),
                    }
                )
            )
        else:
            return


async def _answer(
    ws: ServerConnection, kind: str, message: str | bytes, rng: random.Random, received: list[int]
) -> None:
    if isinstance(message, bytes):
        received[0] += len(message)
        if rng.random() < 0.5:
            await ws.send(json.dumps({"type": "progress", "bytes": received[0]}))
        return
    doc = json.loads(message)
    kind_of = doc.get("type")
    if kind_of == "join":
        history = [
            {"from": f"u{rng.randint(1, 999)}", "text": _blob(rng, rng.randint(5, 120))}
            for _ in range(rng.randint(5, 40))
        ]
        await ws.send(json.dumps({"type": "history", "messages": history}))
    elif kind_of == "subscribe":
        await ws.send(
            json.dumps({"type": "snapshot", "data": _blob(rng, rng.randint(3000, 30000))})
        )
    elif kind_of == "open":
        await ws.send(
            json.dumps({"type": "document", "text": _blob(rng, rng.randint(5000, 60000))})
        )
    elif kind_of in ("message", "op"):
        await ws.send(json.dumps({"type": "ack", "id": doc.get("id", doc.get("v"))}))
    elif kind_of == "heartbeat":
        await ws.send(json.dumps({"type": "heartbeat-ack"}))
    elif kind_of in ("begin", "end"):
        await ws.send(
            json.dumps({"type": "ready" if kind_of == "begin" else "stored", "bytes": received[0]})
        )


def handler(done: Path):  # type: ignore[no-untyped-def]
    async def handle(ws: ServerConnection) -> None:
        kind = (ws.request.path if ws.request else "").rsplit("/", 1)[-1]
        rng = random.Random()
        received = [0]
        pusher = asyncio.create_task(_pusher(ws, rng, kind))
        try:
            async for message in ws:
                await _answer(ws, kind, message, rng, received)
        except ConnectionClosed:
            pass
        finally:
            pusher.cancel()
            with done.open("a") as f:
                f.write(kind + "\n")

    return handle


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--done", type=Path, required=True)
    args = parser.parse_args()
    # permessage-deflate as most sites' stacks offer it (Chromium asks for it).
    async with serve(handler(args.done), "127.0.0.1", args.port, max_size=1 << 20):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
