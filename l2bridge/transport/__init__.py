"""WebSocket-mimicking transport: RFC 6455 through ``websockets``, a browser's
handshake, connection tokens and a decoy web site for everything else."""
