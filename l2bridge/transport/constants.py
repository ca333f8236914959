"""Sizes, limits and timers of the WebSocket-mimicking transport, in one place."""

from __future__ import annotations

# --- connection token -------------------------------------------------------
ACCESS_KEY_BYTES = 32
TOKEN_NONCE_BYTES = 16
TOKEN_MAC_BYTES = 16
TOKEN_BYTES = TOKEN_NONCE_BYTES + TOKEN_MAC_BYTES
# base64url without padding of TOKEN_BYTES (32 bytes -> 43 characters).
TOKEN_TEXT_LENGTH = 43
TOKEN_LABEL = b"shadowmesh ws token v1"
DEFAULT_TOKEN_WINDOW_S = 60
# Windows accepted either side of the exit's current one (clock skew).
TOKEN_WINDOW_SLACK = 1
# Replay cache: nonces kept per live window; past this the exit refuses new
# connections for that window rather than grow memory (fail closed).
REPLAY_CACHE_PER_WINDOW = 100_000

# --- HTTP request head screening ---------------------------------------------
MAX_REQUEST_LINE = 4096
MAX_REQUEST_HEAD = 8192
MAX_HEADER_COUNT = 64
MAX_METHOD_LENGTH = 16
# Like a web server's client_header_timeout: a request head not complete by
# then is dropped silently.
DEFAULT_HEADER_TIMEOUT_S = 10.0

# --- decoy site ---------------------------------------------------------------
DEFAULT_SERVER_HEADER = "nginx"
MAX_DECOY_FILES = 256
MAX_DECOY_FILE_BYTES = 1 << 20

# --- listening ----------------------------------------------------------------
# Pending connections the kernel queues per listening socket (capped by
# net.core.somaxconn, 4096 on current kernels). 100 dropped 69-212 of 2,000
# simultaneous connects; a reconnect storm of every client at once must fit.
DEFAULT_BACKLOG = 4096

# --- WebSocket ----------------------------------------------------------------
DEFAULT_WS_PATH = "/ws"
# One record per message; a batch of frames may reach a few hundred KiB.
MAX_MESSAGE_BYTES = 4 << 20
# Browsers never send pings (JavaScript cannot); servers commonly ping every
# 25-30 s (socket.io uses 25 s). The client only answers pongs.
SERVER_PING_INTERVAL_S = 25.0
SERVER_PING_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 15.0
WRITE_LIMIT_BYTES = 1 << 20
MAX_QUEUE_MESSAGES = 32
# Messages a direct (tunnel) connection holds before the tunnel takes them over;
# the handshake needs one or two. Past this, reading pauses.
EARLY_MESSAGES = 8
