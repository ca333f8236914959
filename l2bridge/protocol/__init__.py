"""The sans-I/O tunnel protocol: handshake, key exchange, sessions, records, key slots and
the replay window.

Nothing here opens a socket, a device or a thread: bytes and ``now`` go in, events and bytes
come out. ``SessionPair`` joins two endpoints in memory for tests and benchmarks.
"""
