"""Corpus readers: documents (bytes) from text, .zst text, .jsonl, .parquet; tokens from golf shards.

Every reader streams: memory stays bounded by one document (or one read block), never a whole
file, so multi-gigabyte corpora can be tokenized on a small machine.

Parameter Golf shard format (DESIGN.md section 5), all little-endian:

| offset | size | field | value |
|---|---|---|---|
| 0 | 4 | magic | int32 20240520 |
| 4 | 4 | version | int32 1 |
| 8 | 4 | n_tokens | int32 number of tokens that follow |
| 12 | 1012 | reserved | 253 int32, written as 0, ignored on read |
| 1024 | 2 * n_tokens | tokens | uint16; each document starts with BOS (id 1) |
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmzip.errors import FormatError, LmzipError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
DEFAULT_DOC_BYTES = 1 << 16
_READ_BLOCK = 1 << 20

TEXT_SUFFIXES = (".txt", ".text", ".md", ".zst")


# -- byte streams ---------------------------------------------------------------------------------


def open_bytes(path: str | os.PathLike) -> io.BufferedIOBase:
    """A binary stream of the file's content, decompressing `.zst` on the fly."""
    path = Path(path)
    if not path.is_file():
        raise LmzipError(f"no such file: {path}")
    if path.suffix == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.BufferedReader(raw, _READ_BLOCK)
    return open(path, "rb")


def _inner_suffix(path: Path) -> str:
    """`.jsonl` for `x.jsonl.zst`, `.jsonl` for `x.jsonl`: the format under the compression."""
    return path.with_suffix("").suffix if path.suffix == ".zst" else path.suffix


# -- documents ------------------------------------------------------------------------------------


def split_text(stream: io.BufferedIOBase, doc_bytes: int = DEFAULT_DOC_BYTES) -> Iterator[bytes]:
    """Cut a text stream into documents of about `doc_bytes`.

    Plain text has no document markers, so documents are cut at the first blank line after
    `doc_bytes` (paragraphs stay whole); text without blank lines is cut at the last newline
    before `2 * doc_bytes`, and text without newlines at exactly `2 * doc_bytes`. The rule is a
    pure function of the bytes, so the same file always gives the same documents (the train /
    validation split depends on that). Concatenating the documents gives the input back.
    """
    if doc_bytes < 1:
        raise ValueError("doc_bytes must be >= 1")
    buf = b""
    while True:
        block = stream.read(_READ_BLOCK)
        buf += block
        # `>` not `>=`: a blank line ending at byte 2 * doc_bytes must be visible before cutting
        while len(buf) > 2 * doc_bytes or (not block and buf):
            cut = buf.find(b"\n\n", doc_bytes)
            if 0 <= cut < 2 * doc_bytes:
                end = cut + 2
            elif len(buf) <= 2 * doc_bytes:  # end of input: the rest is the last document
                end = len(buf)
            else:
                nl = buf.rfind(b"\n", doc_bytes, 2 * doc_bytes)
                end = nl + 1 if nl >= 0 else 2 * doc_bytes
            yield buf[:end]
            buf = buf[end:]
        if not block:
            return


def iter_jsonl(stream: io.BufferedIOBase, field: str = "text") -> Iterator[bytes]:
    """One document per JSON line: the UTF-8 bytes of its `field` (FineWeb docs use `text`)."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"line {lineno}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
            raise FormatError(f"line {lineno}: no string field {field!r}")
        yield rec[field].encode("utf-8")


def iter_parquet(path: str | os.PathLike, field: str = "text") -> Iterator[bytes]:
    """One document per row of a (FineWeb) parquet file, read one row group at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmzipError(
            "reading .parquet needs pyarrow (pip install 'lmzip[parquet]'); "
            "or convert the file to .jsonl"
        ) from None
    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise FormatError(f"{path}: parquet file has no column {field!r}")
    for i in range(pf.num_row_groups):
        for text in pf.read_row_group(i, columns=[field]).column(field).to_pylist():
            if text is not None:
                yield text.encode("utf-8")


def iter_documents(
    path: str | os.PathLike, doc_bytes: int = DEFAULT_DOC_BYTES, field: str = "text"
) -> Iterator[bytes]:
    """Documents of a text-like corpus file, chosen by suffix (golf .bin shards are tokens:
    use `iter_shard_documents`)."""
    path = Path(path)
    kind = _inner_suffix(path)
    if kind == ".parquet":
        yield from iter_parquet(path, field)
        return
    with open_bytes(path) as f:
        if kind in (".jsonl", ".json", ".ndjson"):
            yield from iter_jsonl(f, field)
        else:
            yield from split_text(f, doc_bytes)


# -- Parameter Golf shards -----------------------------------------------------------------------


def read_shard_header(path: str | os.PathLike) -> int:
    """Validate a golf shard's header and size; returns its token count."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(SHARD_HEADER_BYTES), dtype="<i4")
    if head.size != SHARD_HEADER_INTS:
        raise FormatError(f"{path}: shard shorter than its 1024-byte header")
    if int(head[0]) != SHARD_MAGIC:
        raise FormatError(f"{path}: bad shard magic {int(head[0])} (want {SHARD_MAGIC})")
    if int(head[1]) != SHARD_VERSION:
        raise FormatError(f"{path}: unsupported shard version {int(head[1])}")
    n = int(head[2])
    if n < 0 or size != SHARD_HEADER_BYTES + 2 * n:
        raise FormatError(f"{path}: header says {n} tokens but the file has {size} bytes")
    return n


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a golf shard as a read-only uint16 memmap (nothing is loaded up front)."""
    n = read_shard_header(path)
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES, shape=(n,))


def write_shard(path: str | os.PathLike, tokens: Iterable[np.ndarray] | np.ndarray) -> int:
    """Write tokens (one array or an iterable of arrays) as a golf shard, atomically.

    Returns the token count. Ids must fit uint16 (vocab <= 65536)."""
    path = Path(path)
    parts = [tokens] if isinstance(tokens, np.ndarray) else tokens
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "wb") as f:
        f.write(b"\0" * SHARD_HEADER_BYTES)
        for a in parts:
            a = np.asarray(a)
            if a.size and (a.min() < 0 or a.max() > 0xFFFF):
                raise ValueError("token ids must be in 0..65535 for a golf shard")
            f.write(a.astype("<u2").tobytes())
            n += a.size
        if n >= 1 << 31:
            raise ValueError("a golf shard holds fewer than 2^31 tokens")
        header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
        header[:3] = (SHARD_MAGIC, SHARD_VERSION, n)
        f.seek(0)
        f.write(header.tobytes())
    os.replace(tmp, path)
    return n


def iter_shard_documents(path: str | os.PathLike, bos_id: int = 1) -> Iterator[np.ndarray]:
    """Token documents of a golf shard: each starts at a BOS (tokens before the first BOS, if
    any, form one document of their own)."""
    tokens = open_shard(path)
    if tokens.size == 0:
        return
    starts = np.flatnonzero(tokens == bos_id)
    bounds = np.concatenate([[0] if starts.size == 0 or starts[0] != 0 else [], starts])
    bounds = np.append(bounds.astype(np.int64), tokens.size)
    for a, b in itertools.pairwise(bounds):
        yield np.array(tokens[a:b], dtype=np.int32)
