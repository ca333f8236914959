"""Post-quantum backends (ML-KEM-1024, ML-DSA-87) and wiping of key material."""
