"""lmzip: lossless compression with a small language model and an exact integer engine."""

__version__ = "0.1.0"
