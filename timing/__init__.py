"""ShadowMesh timing package."""
