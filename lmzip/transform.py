"""Reversible per-chunk transforms applied before tokenization (format_spec/stream.md 3.9).

The shipped models were trained on text with LF line ends; a CRLF text (Windows, many Project
Gutenberg and Canterbury corpus files) puts a carriage return the model has rarely seen before
every line end. When every LF of a chunk follows a CR, the chunk is coded with its CRLF pairs
written as LF, and the decoder writes them back: exact, because such a chunk has no bare LF, so
every LF of the coded text stands for one CRLF. Pure bytes, no torch.
"""

from __future__ import annotations

from lmzip.errors import FormatError

NONE, CRLF = 0, 1
NAMES = {NONE: "none", CRLF: "crlf"}


def choose(raw: bytes) -> int:
    """The transform for a chunk: CRLF when it has CRLF pairs and no LF without a CR before it."""
    n_lf = raw.count(b"\n")
    return CRLF if n_lf and raw.count(b"\r\n") == n_lf else NONE


# transform -> (bytes in the original, bytes in the coded text); NONE maps nothing
_PAIRS = {CRLF: (b"\r\n", b"\n")}


def forward(raw: bytes, transform: int) -> bytes:
    """The text that is tokenized and coded for a chunk whose original bytes are raw."""
    if transform == NONE:
        return raw
    if transform not in _PAIRS:
        raise ValueError(f"unknown transform {transform}")
    original, coded = _PAIRS[transform]
    return raw.replace(original, coded)


def inverse(text: bytes, transform: int) -> bytes:
    """The original bytes of a chunk from its decoded text."""
    if transform == NONE:
        return text
    if transform not in _PAIRS:
        raise FormatError(f"unknown chunk transform {transform}")
    original, coded = _PAIRS[transform]
    return text.replace(coded, original)
