"""Identities: hybrid signing keys, device certificates, allow-lists, revocation lists and
the key files that hold them."""
