"""Per-chunk line-end transform (format_spec/stream.md 3.3): choice and exact inversion."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip import transform
from lmzip.errors import FormatError


@pytest.mark.parametrize(
    "raw, want",
    [
        (b"", transform.NONE),
        (b"no line end", transform.NONE),
        (b"a\r\nb\r\n", transform.CRLF),
        (b"a\r\nb\n", transform.NONE),  # one bare LF: not reversible, so not used
        (b"\na\r\n", transform.NONE),  # LF at the start (its CR was in the previous chunk)
        (b"a\r\r\nb\rc\r\n\r", transform.CRLF),  # lone CRs stay as they are
        (b"a\rb\r", transform.NONE),  # CRs without LF: nothing to gain
    ],
)
def test_choose(raw, want):
    assert transform.choose(raw) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" ", b"\xff"]), max_size=40))
def test_chosen_transform_inverts_exactly(parts):
    raw = b"".join(parts)
    tf = transform.choose(raw)
    text = transform.forward(raw, tf)
    assert transform.inverse(text, tf) == raw
    if tf == transform.CRLF:
        assert len(text) == len(raw) - raw.count(b"\r\n")


def test_unknown_transform():
    with pytest.raises(FormatError, match="unknown chunk transform 9"):
        transform.inverse(b"x", 9)
    with pytest.raises(ValueError):
        transform.forward(b"x", 9)
