"""ShadowMesh attestation package."""
