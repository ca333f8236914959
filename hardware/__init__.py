"""ShadowMesh hardware package."""
