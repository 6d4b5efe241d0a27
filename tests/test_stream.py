"""Compressed file (.lmz): writer/reader round trips, streaming input, malformed input."""

import hashlib
import io
import os
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip import stream
from lmzip.errors import ChecksumError, FormatError, ModelMismatchError, VersionError
from lmzip.stream import ChunkRecord, StreamParams, StreamReader, StreamWriter

MID = hashlib.sha256(b"model").digest()
PARAMS = StreamParams(MID, 1, 16, 8, 512, b"\x01\x02")


def _write(data: bytes, params: StreamParams = PARAMS, coded: bool = False) -> bytes:
    f, h = io.BytesIO(), stream.ContentHasher()
    w = StreamWriter(f, params)
    for i in range(0, len(data), params.chunk_size):
        c = data[i : i + params.chunk_size]
        if coded and i == 0:  # a fake coded payload: the format does not interpret it
            w.add_chunk(ChunkRecord(1, len(c), 3, 5, stream.chunk_checksum(c)), b"\x00" * 5)
        else:
            w.add_chunk(ChunkRecord(0, len(c), 0, len(c), stream.chunk_checksum(c)), c)
        h.update(c)
    n = w.finish(len(data), h.digest())
    assert n == len(f.getvalue())
    return f.getvalue()


def _decode(blob: bytes) -> bytes:
    out = []
    stream.decode_stream(StreamReader(io.BytesIO(blob)), None, out.append)
    return b"".join(out)


class _Pipe(io.RawIOBase):
    """A non-seekable reader that returns short reads, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self.data), 7)
        b = self.data[self.pos : self.pos + n]
        self.pos += len(b)
        return b


@pytest.mark.parametrize("data", [b"", b"x", b"12345678", b"hello world, a longer text\n" * 3])
def test_round_trip(data):
    blob = _write(data)
    assert _decode(blob) == data
    r = StreamReader(io.BytesIO(blob))
    assert r.header.params == PARAMS
    assert r.header.original_size == len(data) and r.header.n_chunks == -(-len(data) // 8)
    assert len(blob) == stream.HEADER_SIZE + stream.RECORD_SIZE * (r.header.n_chunks + 1) + len(
        data
    )


def test_reads_from_non_seekable_stream():
    data = b"streaming from a pipe works " * 5
    blob = _write(data)
    out = []
    stream.decode_stream(StreamReader(_Pipe(blob)), None, out.append)
    assert b"".join(out) == data
    with pytest.raises(FormatError, match="truncated payload"):
        list(StreamReader(_Pipe(blob[:176])))
    with pytest.raises(FormatError, match="trailing"):
        list(StreamReader(_Pipe(blob + b"!")))


def test_reads_real_file_and_stdin(tmp_path):
    data = os.urandom(100)
    path = tmp_path / "x.lmz"
    path.write_bytes(_write(data))
    with open(path, "rb") as f:
        assert [rec.raw_size for rec, _ in StreamReader(f)] == [8] * 12 + [4]
    code = (
        "import sys, lmzip.stream as s; out = []; "
        "s.decode_stream(s.StreamReader(sys.stdin.buffer), None, out.append); "
        "sys.stdout.buffer.write(b''.join(out))"
    )
    with open(path, "rb") as f:
        r = subprocess.run([sys.executable, "-c", code], stdin=f, capture_output=True, check=True)
    assert r.stdout == data


def test_coded_chunks_are_passed_through():
    blob = _write(b"abcdefgh12345", coded=True)
    chunks = list(StreamReader(io.BytesIO(blob)))
    assert chunks[0] == (ChunkRecord(1, 8, 3, 5, stream.chunk_checksum(b"abcdefgh")), bytes(5))
    out = []
    stream.decode_stream(StreamReader(io.BytesIO(blob)), lambda rec, p: b"abcdefgh", out.append)
    assert b"".join(out) == b"abcdefgh12345"
    with pytest.raises(ChecksumError, match="chunk checksum"):
        stream.decode_stream(StreamReader(io.BytesIO(blob)), lambda r, p: b"abcdefgX", print)
    with pytest.raises(ChecksumError, match="decoded to"):
        stream.decode_stream(StreamReader(io.BytesIO(blob)), lambda r, p: b"abc", print)


def test_model_mismatch_names_both_ids():
    h = StreamReader(io.BytesIO(_write(b"abc"))).header
    stream.check_model_id(h, MID)
    other = hashlib.sha256(b"other").digest()
    with pytest.raises(ModelMismatchError) as e:
        stream.check_model_id(h, other)
    msg = str(e.value)
    assert MID.hex()[:12] in msg and other.hex()[:12] in msg and "-m" in msg


def test_unfinished_file_is_rejected():
    f = io.BytesIO()
    w = StreamWriter(f, PARAMS)
    w.add_chunk(ChunkRecord(0, 3, 0, 3, stream.chunk_checksum(b"abc")), b"abc")
    with pytest.raises(ChecksumError, match="unfinished"):
        StreamReader(io.BytesIO(f.getvalue()))


def test_version_checked_before_checksum():
    blob = bytearray(_write(b"abc"))
    assert blob[8] == 2  # this build writes format version 2
    blob[8] = 3
    with pytest.raises(VersionError, match="version 3"):
        StreamReader(io.BytesIO(bytes(blob)))


def _with_version(blob: bytes, version: int) -> bytes:
    """blob with another format_version and a valid header CRC (a file as that version writes)."""
    b = bytearray(blob)
    struct.pack_into("<H", b, 8, version)
    struct.pack_into("<I", b, 140, zlib.crc32(bytes(b[:140])))
    return bytes(b)


def _transform_blob(tf: int, method: int = 1) -> bytes:
    raw = b"ab\r\ncd\r\nX"  # chunk_size 8: "ab\r\ncd\r\n" coded, "X" stored
    f, h = io.BytesIO(), stream.ContentHasher()
    w = StreamWriter(f, PARAMS)
    if method == 1:
        w.add_chunk(ChunkRecord(1, 8, 3, 5, stream.chunk_checksum(raw[:8]), tf), bytes(5))
    else:
        w.add_chunk(ChunkRecord(0, 8, 0, 8, stream.chunk_checksum(raw[:8])), raw[:8])
    w.add_chunk(ChunkRecord(0, 1, 0, 1, stream.chunk_checksum(raw[8:])), raw[8:])
    h.update(raw)
    w.finish(len(raw), h.digest())
    return f.getvalue()


def test_crlf_transform_is_inverted_by_the_reader():
    blob = _transform_blob(1)
    recs = [r for r, _ in StreamReader(io.BytesIO(blob))]
    assert [r.transform for r in recs] == [1, 0]
    out = []
    # the chunk's coded text has LF where the original has CRLF; decode_stream writes CRLF back
    stream.decode_stream(StreamReader(io.BytesIO(blob)), lambda r, p: b"ab\ncd\n", out.append)
    assert b"".join(out) == b"ab\r\ncd\r\nX"


def test_version_1_files_still_read_but_carry_no_transform():
    plain = _with_version(_write(b"hello world, a longer text\n", coded=False), 1)
    assert _decode(plain) == b"hello world, a longer text\n"
    with pytest.raises(FormatError, match="transform"):  # byte 2 of a record was reserved in v1
        list(StreamReader(io.BytesIO(_with_version(_transform_blob(1), 1))))


def test_bad_transforms_are_rejected():
    for rec, payload in [
        (ChunkRecord(1, 1, 1, 2, 0, 2), b"xx"),  # unknown transform
        (ChunkRecord(0, 1, 0, 1, stream.chunk_checksum(b"x"), 1), b"x"),  # stored + transform
    ]:
        with pytest.raises(ValueError, match="transform"):
            StreamWriter(io.BytesIO(), PARAMS).add_chunk(rec, payload)
    blob = bytearray(_transform_blob(1))
    rec0 = 144
    blob[rec0 + 2] = 7  # transform 7 in the first record, record CRC fixed up
    struct.pack_into("<I", blob, rec0 + 24, zlib.crc32(bytes(blob[rec0 : rec0 + 24])))
    with pytest.raises(FormatError, match="unknown chunk transform 7"):
        list(StreamReader(io.BytesIO(bytes(blob))))


@pytest.mark.parametrize(
    "change",
    [
        {"precision": 0},
        {"precision": 25},
        {"chunk_size": 0},
        {"chunk_size": (64 << 20) + 1},
        {"window": 0},
        {"mixer": bytes(65)},
        {"flags": 1},
        {"model_id": b"short"},
    ],
)
def test_writer_rejects_bad_params(change):
    with pytest.raises(ValueError):
        StreamWriter(io.BytesIO(), StreamParams(**{**PARAMS.__dict__, **change}))


def test_writer_rejects_bad_records():
    w = StreamWriter(io.BytesIO(), PARAMS)
    for rec, payload in [
        (ChunkRecord(3, 1, 0, 1, 0), b"x"),  # unknown method
        (ChunkRecord(0, 9, 0, 9, 0), b"x" * 9),  # over chunk_size
        (ChunkRecord(0, 1, 0, 1, 0), b"x"),  # stored checksum wrong
        (ChunkRecord(1, 1, 0, 2, 0), b"x"),  # payload length mismatch
    ]:
        with pytest.raises(ValueError):
            w.add_chunk(rec, payload)
    with pytest.raises(ValueError):
        w.finish(5, bytes(8))


def test_limits_justified_values():
    assert stream.max_payload(stream.MAX_CHUNK_SIZE) == 8 * (64 << 20) + 1024
    assert stream.max_tokens(10) == 84


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_corruption_raises_only_format_errors(data):
    blob = bytearray(_write(b"some text to damage in many ways!" * 2, coded=True))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    src = io.BytesIO(bytes(blob)) if data.draw(st.booleans()) else _Pipe(bytes(blob))
    try:
        stream.decode_stream(StreamReader(src), lambda r, p: b"some tex", lambda b: None)
    except FormatError as e:
        assert "\n" not in str(e)
