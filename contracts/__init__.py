"""ShadowMesh contracts package."""
