"""ShadowMesh l2bridge package."""
