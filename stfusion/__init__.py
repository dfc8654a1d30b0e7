"""stfusion: spatiotemporal fusion strategies of 3D CNNs as a probability space (Zhou et al., CVPR 2020)."""

__version__ = "0.1.0"
