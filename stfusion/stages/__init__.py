"""The pipeline's stages: each reads its declared parameters and files and writes its outputs atomically."""
