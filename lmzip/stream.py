"""The compressed file (`.lmz`), format version 2 (reads 1 too): see format_spec/stream.md.

Layout: a 144-byte header, one 28-byte record + payload per chunk, a 28-byte end record, EOF.
The writer streams: it writes the header with placeholders, the records as chunks arrive, and
patches the totals into the header at the end (the output must be seekable). The reader needs
no seeking (stdin works) and validates each field against the limits and, where it can, the
remaining file size before it allocates anything.
No torch here: the format must be readable anywhere (a test enforces it).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from lmzip import transform
from lmzip.errors import ChecksumError, FormatError, ModelMismatchError, VersionError

MAGIC = b"\x89LMZ\r\n\x1a\n"  # PNG-style, and differs from the model magic in byte 3
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # a version 1 file is a version 2 file without transforms
HEADER = struct.Struct("<8sHHHBB32sIIQ8sI64sI")  # stream.md section 2
HEADER_SIZE = HEADER.size  # 144
# tag, method, transform, reserved, raw_size, n_tokens, payload_size, checksum x3
CHUNK = struct.Struct("<BBBBIIIIII")
END = struct.Struct("<BBHIQ8sI")  # tag, reserved x2, n_chunks, original_size, checksum, crc
RECORD_SIZE = CHUNK.size  # 28, the same for both record types
TAG_CHUNK, TAG_END = 0x43, 0x45  # "C", "E"
METHOD_STORED, METHOD_LM, METHOD_MIXED = 0, 1, 2
METHODS = {METHOD_STORED: "stored", METHOD_LM: "lm", METHOD_MIXED: "mixed"}
KNOWN_FLAGS = 0  # no flag is defined: every bit is reserved and MUST be zero

# Limits (stream.md section 5).
MAX_CHUNK_SIZE = 64 << 20
MAX_WINDOW = 1 << 20
MAX_MIXER = 64
MAX_ORIGINAL_SIZE = 1 << 48


def max_payload(raw_size: int) -> int:
    """The coder emits <= ceil(P/8) <= 3 bytes per token (+6), at most 2 tokens per byte: 6x.

    8x + 1 KiB leaves room for mixer side data; stream.md section 5.
    """
    return 8 * raw_size + 1024


def max_tokens(raw_size: int) -> int:
    """Every non-control token covers >= 1 byte; control tokens (BOS) precede >= 1 byte."""
    return 2 * raw_size + 64


@dataclass(frozen=True)
class StreamParams:
    """Every setting that changes the coded bytes (stream.md section 2)."""

    model_id: bytes
    numerics_version: int
    precision: int
    chunk_size: int
    window: int
    mixer: bytes = b""
    flags: int = 0


@dataclass(frozen=True)
class StreamHeader:
    format_version: int
    flags: int
    numerics_version: int
    precision: int
    model_id: bytes
    chunk_size: int
    window: int
    original_size: int
    content_checksum: bytes
    n_chunks: int
    mixer: bytes

    @property
    def params(self) -> StreamParams:
        return StreamParams(self.model_id, self.numerics_version, self.precision,
                            self.chunk_size, self.window, self.mixer, self.flags)  # fmt: skip

    def to_dict(self) -> dict:
        """JSON-ready: bytes fields as lowercase hex."""
        return {k: v.hex() if isinstance(v, bytes) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ChunkRecord:
    method: int
    raw_size: int
    n_tokens: int
    payload_size: int
    checksum: int  # chunk_checksum of the chunk's original bytes
    transform: int = 0  # transform.NONE / CRLF: how the coded text maps to the original bytes


def chunk_checksum(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib) of a chunk's original bytes."""
    return zlib.crc32(data)


class ContentHasher:
    """BLAKE2b with an 8-byte digest over the whole original content (~1.2 GB/s)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=8)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


def check_model_id(header: StreamHeader, model_id: bytes) -> None:
    if header.model_id != model_id:
        raise ModelMismatchError(
            f"file was compressed with model {header.model_id.hex()[:12]}, but the given model "
            f"is {model_id.hex()[:12]}; pass the model with id {header.model_id.hex()[:12]} with "
            f"-m MODEL (`lmzip info MODEL` prints a model's id)"
        )


def verify_chunk(record: ChunkRecord, data: bytes) -> None:
    """Check a decoded chunk against its record (size and checksum)."""
    if len(data) != record.raw_size:
        raise ChecksumError(f"chunk decoded to {len(data)} bytes, record says {record.raw_size}")
    if chunk_checksum(data) != record.checksum:
        raise ChecksumError("bad chunk checksum: decoded bytes differ from the original")


def check_content(header: StreamHeader, digest: bytes) -> None:
    if digest != header.content_checksum:
        raise ChecksumError("bad content checksum: decoded content differs from the original")


# ---------------------------------------------------------------- header


def _check_params(p: StreamParams) -> str | None:
    """-> the first problem with the coding parameters, or None (shared by writer and reader)."""
    if len(p.model_id) != 32:
        return "model_id must be 32 bytes"
    if p.flags & ~KNOWN_FLAGS & 0xFFFF or not 0 <= p.flags <= 0xFFFF:
        return f"reserved flag bits set ({p.flags:#06x})"
    if not 0 <= p.numerics_version <= 0xFFFF:
        return "numerics_version must fit in u16"
    if not 1 <= p.precision <= 24:
        return f"precision {p.precision} is outside 1..24"
    if not 1 <= p.chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk_size {p.chunk_size} is outside 1..{MAX_CHUNK_SIZE}"
    if not 1 <= p.window <= MAX_WINDOW:
        return f"window {p.window} is outside 1..{MAX_WINDOW}"
    if len(p.mixer) > MAX_MIXER:
        return f"mixer parameters are {len(p.mixer)} bytes (limit {MAX_MIXER})"
    return None


def pack_header(p: StreamParams, original_size: int, n_chunks: int, content: bytes) -> bytes:
    head = HEADER.pack(MAGIC, FORMAT_VERSION, p.flags, p.numerics_version, p.precision,
                       len(p.mixer), p.model_id, p.chunk_size, p.window, original_size,
                       content, n_chunks, p.mixer, 0)[:-4]  # fmt: skip
    return head + struct.pack("<I", zlib.crc32(head))


def parse_header(head: bytes) -> StreamHeader:
    if len(head) < 10:
        raise FormatError(f"truncated header ({len(head)} of {HEADER_SIZE} bytes)")
    if head[:8] != MAGIC:
        raise FormatError("bad magic: not an lmzip compressed file")
    (version,) = struct.unpack_from("<H", head, 8)
    if version not in READ_VERSIONS:  # before the CRC: another version may have another layout
        raise VersionError(
            f"unsupported .lmz format version {version} (this build reads versions 1 and 2)"
        )
    if len(head) < HEADER_SIZE:
        raise FormatError(f"truncated header ({len(head)} of {HEADER_SIZE} bytes)")
    (_, _, flags, numerics, precision, mixer_size, model_id, chunk_size, window, original_size,
     content, n_chunks, mixer, crc) = HEADER.unpack(head)  # fmt: skip
    if zlib.crc32(head[:-4]) != crc:
        raise ChecksumError("bad header checksum (corrupt, or an unfinished file)")
    if mixer_size > MAX_MIXER or any(mixer[mixer_size:]):
        raise FormatError("mixer field: bad size or non-zero reserved padding")
    h = StreamHeader(version, flags, numerics, precision, model_id, chunk_size, window,
                     original_size, content, n_chunks, mixer[:mixer_size])  # fmt: skip
    problem = _check_params(h.params)
    if problem:
        raise FormatError(problem)
    if original_size > MAX_ORIGINAL_SIZE:
        raise FormatError(f"declared original_size {original_size} is over the limit")
    if n_chunks > original_size or original_size > n_chunks * chunk_size:
        raise FormatError(f"n_chunks {n_chunks} is inconsistent with original_size")
    return h


# ---------------------------------------------------------------- writer


class StreamWriter:
    """Writes a .lmz to a seekable binary file object; the caller renames the temp file."""

    def __init__(self, fileobj: io.BufferedIOBase, params: StreamParams) -> None:
        problem = _check_params(params)
        if problem:
            raise ValueError(problem)
        if not fileobj.seekable():
            raise ValueError("StreamWriter needs a seekable output (write a temp file)")
        self.f, self.params = fileobj, params
        self.start = fileobj.tell()
        self.n_chunks = self.raw_total = 0
        # A zero header checksum makes an unfinished file fail to open.
        self.f.write(pack_header(params, 0, 0, bytes(8))[:-4] + bytes(4))
        self.written = HEADER_SIZE

    def add_chunk(self, record: ChunkRecord, payload: bytes) -> None:
        problem = _check_record(record, self.params.chunk_size)
        if problem or len(payload) != record.payload_size:
            raise ValueError(problem or "payload length != record.payload_size")
        if record.method == METHOD_STORED and chunk_checksum(payload) != record.checksum:
            raise ValueError("stored payload does not match record.checksum")
        body = CHUNK.pack(TAG_CHUNK, record.method, record.transform, 0, record.raw_size,
                          record.n_tokens, record.payload_size, record.checksum,
                          zlib.crc32(payload), 0)[:-4]  # fmt: skip
        self.f.write(body + struct.pack("<I", zlib.crc32(body)))
        self.f.write(payload)
        self.n_chunks += 1
        self.raw_total += record.raw_size
        self.written += RECORD_SIZE + len(payload)

    def finish(self, original_size: int, content_checksum: bytes) -> int:
        """Write the end record, patch the header; returns the total bytes written."""
        if original_size != self.raw_total or len(content_checksum) != 8:
            raise ValueError("original_size != sum of raw sizes, or checksum not 8 bytes")
        body = END.pack(TAG_END, 0, 0, self.n_chunks, original_size, content_checksum, 0)[:-4]
        self.f.write(body + struct.pack("<I", zlib.crc32(body)))
        end = self.f.tell()
        self.f.seek(self.start)
        self.f.write(pack_header(self.params, original_size, self.n_chunks, content_checksum))
        self.f.seek(end)
        self.f.flush()
        return self.written + RECORD_SIZE


# ---------------------------------------------------------------- reader


def _check_record(r: ChunkRecord, chunk_size: int, version: int = FORMAT_VERSION) -> str | None:
    if r.method not in METHODS:
        return f"unknown chunk method {r.method}"
    if r.transform not in transform.NAMES or (r.transform and version < 2):
        return f"unknown chunk transform {r.transform}"
    if r.transform and r.method == METHOD_STORED:
        return "stored chunk with a transform"
    if not 1 <= r.raw_size <= chunk_size:
        return f"chunk raw_size {r.raw_size} is outside 1..chunk_size ({chunk_size})"
    if r.method == METHOD_STORED and (r.payload_size != r.raw_size or r.n_tokens):
        return "stored chunk: payload_size must equal raw_size and n_tokens be 0"
    if r.n_tokens > max_tokens(r.raw_size):
        return f"chunk n_tokens {r.n_tokens} is over the limit for {r.raw_size} bytes"
    if r.payload_size > max_payload(r.raw_size):
        return f"chunk payload_size {r.payload_size} is over the limit for {r.raw_size} bytes"
    return None


class StreamReader:
    """Iterate `(ChunkRecord, payload)`; validates records, payload CRCs, counts and EOF.

    The payloads of coded chunks are returned undecoded: the caller decodes each one and calls
    `verify_chunk` and, after the last one, `check_content` (or uses `decode_stream`).
    """

    def __init__(self, fileobj: io.BufferedIOBase) -> None:
        self.f = fileobj
        self._left = None  # bytes left in the file when that can be known (seekable input)
        try:
            if fileobj.seekable():
                pos = fileobj.tell()
                self._left = os.fstat(fileobj.fileno()).st_size - pos
        except (OSError, AttributeError, io.UnsupportedOperation):
            self._left = None  # BytesIO and pipes: fall back to reading in bounded pieces
        if self._left is None and isinstance(fileobj, io.BytesIO):
            self._left = len(fileobj.getbuffer()) - fileobj.tell()
        self.header = parse_header(self._read(HEADER_SIZE, "header", partial=True))

    def _read(self, n: int, what: str, partial: bool = False) -> bytes:
        if self._left is not None and n > self._left and not partial:
            raise FormatError(f"truncated {what}: needs {n} bytes, {self._left} left in file")
        parts, got = [], 0
        while got < n:  # bounded pieces: a lying length can't make us allocate it up front
            b = self.f.read(min(n - got, 1 << 20))
            if not b:
                break
            parts.append(b)
            got += len(b)
        data = b"".join(parts)
        if self._left is not None:
            self._left -= len(data)
        if len(data) < n and not partial:
            raise FormatError(f"truncated {what} ({len(data)} of {n} bytes)")
        return data

    def __iter__(self) -> Iterator[tuple[ChunkRecord, bytes]]:
        h, count, total = self.header, 0, 0
        while True:
            rec = self._read(RECORD_SIZE, f"record {count}")
            if zlib.crc32(rec[:-4]) != struct.unpack_from("<I", rec, RECORD_SIZE - 4)[0]:
                raise ChecksumError(f"bad record checksum (record {count})")
            if rec[0] == TAG_END:
                break
            if rec[0] != TAG_CHUNK:
                raise FormatError(f"unknown record tag {rec[0]:#04x} (record {count})")
            _, method, tf, reserved, raw, tokens, size, crc, payload_crc, _ = CHUNK.unpack(rec)
            r = ChunkRecord(method, raw, tokens, size, crc, tf)
            problem = ("reserved record bits set" if reserved
                       else _check_record(r, h.chunk_size, h.format_version))  # fmt: skip
            if problem:
                raise FormatError(f"{problem} (chunk {count})")
            if count >= h.n_chunks or total + raw > h.original_size:
                raise FormatError(f"more chunks or bytes than the header declares (chunk {count})")
            payload = self._read(size, f"payload of chunk {count}")
            if zlib.crc32(payload) != payload_crc:
                raise ChecksumError(f"bad payload checksum (chunk {count})")
            if method == METHOD_STORED and chunk_checksum(payload) != crc:
                raise ChecksumError(f"bad chunk checksum (chunk {count})")
            count, total = count + 1, total + raw
            yield r, payload
        _, _, reserved, n, original, content, _ = END.unpack(rec)
        if reserved:
            raise FormatError("reserved end record bits set")
        if (n, original, content) != (h.n_chunks, h.original_size, h.content_checksum):
            raise FormatError("end record does not match the header")
        if (count, total) != (h.n_chunks, h.original_size):
            raise FormatError(f"file has {count} chunks / {total} bytes, header declares "
                              f"{h.n_chunks} / {h.original_size}")  # fmt: skip
        if self._read(1, "end", partial=True):
            raise FormatError("trailing bytes after the end record")


def decode_stream(reader: StreamReader, decode_chunk: Callable[[ChunkRecord, bytes], bytes],
                  write: Callable[[bytes], object]) -> int:  # fmt: skip
    """Sequential reference decoding: stored chunks here, coded ones by `decode_chunk` (which
    returns the decoded text; its transform is inverted here).

    Verifies every chunk and the content checksum; returns the number of bytes written.
    """
    hasher, total = ContentHasher(), 0
    for record, payload in reader:
        if record.method == METHOD_STORED:
            data = payload
        else:
            data = transform.inverse(decode_chunk(record, payload), record.transform)
        verify_chunk(record, data)
        hasher.update(data)
        write(data)
        total += len(data)
    check_content(reader.header, hasher.digest())
    return total
