"""vidssl: self-supervised spatiotemporal feature learning from unlabelled video."""

__version__ = "0.1.0"
