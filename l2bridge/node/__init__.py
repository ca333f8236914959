"""Node plumbing both roles share: configuration, the link driver, metrics, status, cover traffic,
key rotation on clock epochs."""
