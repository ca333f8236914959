"""ShadowMesh exitnode package."""
