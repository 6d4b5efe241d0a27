"""lmzip.data: document readers and the Parameter Golf shard format."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip.data import (
    SHARD_MAGIC,
    iter_documents,
    iter_shard_documents,
    open_shard,
    read_shard_header,
    split_text,
    write_shard,
)
from lmzip.errors import FormatError, LmzipError


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"bc ", b"\n", b"\n\n", b"xyz\n", b"\xc3\xa9"]), max_size=300),
    st.integers(1, 40),
)
def test_split_text_concatenates_to_input(parts, doc_bytes):
    data = b"".join(parts)
    docs = list(split_text(io.BytesIO(data), doc_bytes))
    assert b"".join(docs) == data
    assert all(docs)
    assert all(len(d) <= 2 * doc_bytes + 1 for d in docs)


def test_split_text_cuts_at_blank_lines():
    paras = [f"paragraph {i} ".encode() * 5 + b"\n\n" for i in range(50)]
    docs = list(split_text(io.BytesIO(b"".join(paras)), 200))
    assert len(docs) > 5
    assert all(d.endswith(b"\n\n") for d in docs)


def test_text_zst_and_jsonl(tmp_path):
    text = b"one\n\ntwo\n\nthree\n"
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    assert b"".join(iter_documents(tmp_path / "a.txt", 4)) == text
    assert list(iter_documents(tmp_path / "a.txt.zst", 4)) == list(
        iter_documents(tmp_path / "a.txt", 4)
    )
    recs = [{"text": "héllo", "id": 1}, {"text": "world\n"}]
    jl = "".join(json.dumps(r) + "\n" for r in recs).encode()
    (tmp_path / "d.jsonl").write_bytes(jl)
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jl))
    want = [r["text"].encode() for r in recs]
    assert list(iter_documents(tmp_path / "d.jsonl")) == want
    assert list(iter_documents(tmp_path / "d.jsonl.zst")) == want
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(FormatError, match="no string field"):
        list(iter_documents(tmp_path / "bad.jsonl"))


def test_parquet_reads_or_says_pyarrow_is_missing(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(LmzipError, match="pyarrow"):
            list(iter_documents(tmp_path / "x.parquet"))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", "c"]}), tmp_path / "x.parquet")
    assert list(iter_documents(tmp_path / "x.parquet")) == [b"a b", b"c"]


def test_shard_round_trip(tmp_path):
    toks = np.array([1, 5, 6, 7, 1, 9, 65535, 1, 2], dtype=np.int32)
    n = write_shard(tmp_path / "s.bin", [toks[:4], toks[4:]])
    assert n == toks.size
    raw = (tmp_path / "s.bin").read_bytes()
    head = np.frombuffer(raw[:1024], dtype="<i4")
    assert (head[0], head[1], head[2]) == (SHARD_MAGIC, 1, toks.size)
    assert not head[3:].any()
    assert len(raw) == 1024 + 2 * toks.size
    np.testing.assert_array_equal(np.frombuffer(raw[1024:], dtype="<u2"), toks)
    np.testing.assert_array_equal(open_shard(tmp_path / "s.bin"), toks)
    docs = list(iter_shard_documents(tmp_path / "s.bin"))
    assert [d.tolist() for d in docs] == [[1, 5, 6, 7], [1, 9, 65535], [1, 2]]


def test_hand_made_shard_and_bad_headers(tmp_path):
    # written the way parameter-golf's data scripts do: header ints, then uint16 tokens
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = 20240520, 1, 3
    (tmp_path / "h.bin").write_bytes(header.tobytes() + np.array([1, 2, 3], "<u2").tobytes())
    assert open_shard(tmp_path / "h.bin").tolist() == [1, 2, 3]
    header[0] = 7
    (tmp_path / "m.bin").write_bytes(header.tobytes() + np.array([1, 2, 3], "<u2").tobytes())
    with pytest.raises(FormatError, match="magic"):
        read_shard_header(tmp_path / "m.bin")
    header[0], header[2] = 20240520, 4
    (tmp_path / "t.bin").write_bytes(header.tobytes() + np.array([1, 2, 3], "<u2").tobytes())
    with pytest.raises(FormatError, match="header says"):
        read_shard_header(tmp_path / "t.bin")
    header[1] = 2
    (tmp_path / "v.bin").write_bytes(header.tobytes())
    with pytest.raises(FormatError, match="version"):
        read_shard_header(tmp_path / "v.bin")
