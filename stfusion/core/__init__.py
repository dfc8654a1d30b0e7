"""The method's core, independent of any backbone: fusion strategies and their posterior, Variational DropPath, the fusion units and their costs."""
