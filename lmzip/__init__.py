"""lmzip: lossless compression with a small language model and an exact integer engine."""

__version__ = "0.1.0"

# Chunks coded together as one batch of streams (api.CodingOptions, the CLI's --batch-size);
# here so that the command line can show it without importing torch.
DEFAULT_BATCH = 16
