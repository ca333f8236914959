"""Sizes, limits and timers of the WebSocket-mimicking transport, in one place."""

from __future__ import annotations

# --- connection token (v2: per-device credentials) -------------------------------
MASTER_KEY_BYTES = 32  # an exit's own secret; credentials derive from it
CREDENTIAL_HANDLE_BYTES = 16  # names one credential in the exit's table (not secret)
CREDENTIAL_SECRET_BYTES = 32
HIDE_KEY_BYTES = 16  # AES-128 key that seals the handle inside each token
TOKEN_NONCE_BYTES = 16
TOKEN_MAC_BYTES = 16
TOKEN_BYTES = TOKEN_NONCE_BYTES + CREDENTIAL_HANDLE_BYTES + TOKEN_MAC_BYTES
# base64url without padding of TOKEN_BYTES (48 bytes -> 64 characters, one spelling).
TOKEN_TEXT_LENGTH = 64
TOKEN_LABEL = b"shadowmesh ws token v2"
WINDOW_TAG_LABEL = b"shadowmesh token tag v1"
CREDENTIAL_INFO = b"shadowmesh credential v1"
HIDE_KEY_INFO = b"shadowmesh token handle v1"
DEFAULT_TOKEN_WINDOW_S = 60
# Windows accepted either side of the exit's current one (clock skew).
TOKEN_WINDOW_SLACK = 1
# Replay cache: nonces kept per live window; past this the exit refuses new
# connections for that window rather than grow memory (fail closed). Only tokens
# that pass the MAC and both quotas are cached, so strangers cannot fill it.
REPLAY_CACHE_PER_WINDOW = 100_000
# Handshake quotas (token buckets: this many admissions at once, refilled at this many
# per minute), charged only for valid tokens: per device, and per source address
# (IPv4 address, IPv6 /64) over all of that source's devices.
DEFAULT_HANDSHAKES_PER_DEVICE = 20
DEFAULT_HANDSHAKES_PER_SOURCE = 600
# Sources with a quota bucket held at once; past it, full buckets are forgotten, and if
# none is full a new source is refused (fail closed, bounded memory).
MAX_QUOTA_SOURCES = 65_536
# Credentials one exit's table holds.
MAX_CREDENTIALS = 4096  # a 1 MiB table file (identity.keys MAX_KEY_FILE_SIZE)

# --- HTTP request head screening ---------------------------------------------
# nginx's defaults: client_header_buffer_size 1k, large_client_header_buffers 4 8k. A
# line must fit one large buffer; the head gets the first buffer and the 4 large ones.
HEAD_FIRST_BUFFER = 1024
HEAD_LARGE_BUFFER = 8192
HEAD_LARGE_BUFFERS = 4
MAX_REQUEST_HEAD = HEAD_FIRST_BUFFER + HEAD_LARGE_BUFFERS * HEAD_LARGE_BUFFER
# nginx's client_header_timeout (Debian default 60 s): a request head not complete by
# then is dropped silently. The TLS handshake gets the same time, as nginx gives it.
DEFAULT_HEADER_TIMEOUT_S = 60.0

# --- decoy site ---------------------------------------------------------------
DEFAULT_SERVER_HEADER = "nginx"
MAX_DECOY_FILES = 256
MAX_DECOY_FILE_BYTES = 1 << 20
# nginx's defaults: keepalive_timeout 65, send_timeout 60, lingering_timeout 5,
# lingering_time 30, keepalive_requests 1000.
DEFAULT_KEEPALIVE_TIMEOUT_S = 65.0
DEFAULT_SEND_TIMEOUT_S = 60.0
DECOY_LINGERING_TIMEOUT_S = 5.0
DECOY_LINGERING_TIME_S = 30.0
DECOY_KEEPALIVE_REQUESTS = 1000
# Unprocessed input a decoy connection buffers before it stops reading (nginx stops
# reading while it answers; the peer's data waits in the kernel).
MAX_DECOY_INPUT = 64 * 1024
# Bytes handed to the socket per write while serving a file (back-pressure between).
DECOY_WRITE_CHUNK = 64 * 1024
# TLS close: nginx sends close_notify and does not wait for the peer's. asyncio waits at
# most this long (the front door closes only once its buffers have drained, so the wait
# never cuts an answer short).
TLS_SHUTDOWN_TIMEOUT_S = 0.1

# --- connection caps ------------------------------------------------------------
# Over a cap a connection is closed unread, as an nginx out of worker_connections does.
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 256
# IPv6 sources are counted per /64 (one subscriber's prefix).
IPV6_SOURCE_PREFIX = 64

# --- fallback ---------------------------------------------------------------------
FALLBACK_CONNECT_TIMEOUT_S = 5.0

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
