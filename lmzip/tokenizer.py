"""Lossless tokenizer over a sentencepiece model (DESIGN.md section 4, format_spec/tokenizer.md).

Decoding is a plain concatenation of `token_bytes[id]`, so it cannot lose anything. Encoding must
then only pick ids whose bytes concatenate to the input. Sentencepiece alone does not guarantee that
(normalization, whitespace handling, invalid UTF-8, a literal U+2581), so the encoder:

1. runs sentencepiece with a copy of the model whose normalizer is forced to identity (no NFKC, no
   dummy prefix, no whitespace collapsing) and whose byte fallback is on: the vocabulary and merge
   scores are the model's own, only the text rewriting is switched off;
2. cuts out invalid UTF-8 bytes and literal U+2581 and writes them as byte tokens;
3. checks the result once for the whole input (decode and compare) and, only where that fails,
   re-encodes the failing text run at a finer grain: lines, then words, then characters, then bytes.

Usage:
    tok = Tokenizer.load("fineweb_8192_bpe.model")
    ids = tok.encode(b"any bytes \xff at all")   # np.ndarray[int32]
    assert tok.decode(ids) == b"any bytes \xff at all"
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmzip.errors import FormatError, TokenizerError

SPACE_SYMBOL = "\u2581"  # sentencepiece's visible space; decodes to b" "
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# Bytes that cannot go through sentencepiece unchanged: invalid UTF-8 (turned into lone surrogates
# U+DC80..U+DCFF by the surrogateescape decoder) and a literal U+2581 (it would come back as a space).
# Newlines go the same way when no piece contains one (true of every line-trained model, golf's
# included): sentencepiece would emit <0x0A> for them anyway, and encoding line by line is ~3x
# faster than one long string.
_RAW = re.compile("([\udc80-\udcff\u2581]+)")
_RAW_NL = re.compile("([\udc80-\udcff\u2581\n]+)")
# Finer and finer ways to cut a text run whose sentencepiece output does not round-trip.
_SPLITS = (
    re.compile(r"[^\n]*\n|[^\n]+").findall,  # lines, newline kept
    re.compile(r"\s*\S+|\s+").findall,  # words with their leading whitespace
    list,  # characters; a character that still fails becomes byte tokens
)
# Sentencepiece gets text in pieces of at most this many characters, cut at a newline or space:
# its BPE runs ~1.5x faster on 8 K strings than on 1 MB ones (and the python-int lists it returns
# stay small). The cut rule is deterministic; a cut only stops merges across it.
_CHUNK = 8192
# Sentencepiece is called on at most this many characters at a time, and decode works on this many
# tokens at a time: both bound the temporaries (python int lists, int64 indices) for huge inputs.
_ENCODE_BATCH = 1 << 20
_DECODE_BLOCK = 1 << 20


class Tokenizer:
    """A sentencepiece BPE/unigram model used losslessly. Build with `from_bytes` or `load`."""

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm

        self.model_bytes = bytes(model_bytes)
        try:
            sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        except (RuntimeError, ValueError, IndexError) as e:
            raise TokenizerError(f"not a valid sentencepiece model: {e}") from None
        self.vocab_size = int(sp.vocab_size())
        self.bos_id = int(sp.bos_id())
        self.eos_id = int(sp.eos_id())
        self.unk_id = int(sp.unk_id())
        self.pad_id = int(sp.pad_id())
        if self.bos_id < 0:
            raise TokenizerError("sentencepiece model has no BOS token")

        n = self.vocab_size
        self.pieces = [sp.id_to_piece(i) for i in range(n)]

        # special: control or unknown (decode to nothing, never emitted); unused pieces keep their
        # text for decoding but count as boundaries in the golf byte rule, like control tokens.
        def flag(f) -> np.ndarray:
            return np.array([bool(f(i)) for i in range(n)], dtype=np.bool_)

        self.is_special = flag(sp.is_control) | flag(sp.is_unknown)
        self.is_unused = flag(sp.is_unused)
        self.is_byte = flag(sp.is_byte)
        byte_ids = np.full(256, -1, dtype=np.int32)
        token_bytes: list[bytes] = []
        for i, piece in enumerate(self.pieces):
            if self.is_special[i]:
                token_bytes.append(b"")
            elif self.is_byte[i]:
                m = _BYTE_PIECE.fullmatch(piece)
                if m is None:
                    raise TokenizerError(f"byte piece {i} has unexpected text {piece!r}")
                b = int(m.group(1), 16)
                byte_ids[b] = i
                token_bytes.append(bytes([b]))
            elif piece:
                token_bytes.append(piece.replace(SPACE_SYMBOL, " ").encode("utf-8"))
            else:  # stream limits assume every non-control token covers >= 1 byte
                raise TokenizerError(f"sentencepiece piece {i} is empty")
        if (byte_ids < 0).any():
            missing = int(np.argmax(byte_ids < 0))
            raise TokenizerError(
                f"sentencepiece model has no byte fallback piece <0x{missing:02X}> "
                "(train it with byte_fallback=True)"
            )
        try:
            enc = spm.SentencePieceProcessor(model_proto=_encoder_proto(self.model_bytes))
        except (RuntimeError, ValueError, IndexError) as e:
            raise TokenizerError(f"sentencepiece model cannot be used losslessly: {e}") from None
        if enc.vocab_size() != self.vocab_size:
            raise TokenizerError("sentencepiece model could not be rewritten for lossless use")
        self.token_bytes = token_bytes
        self.byte_ids = byte_ids
        self._enc = enc
        # Flat decode table: bytes of id i are _flat[_off[i] : _off[i] + _len[i]].
        self._len = np.array([len(b) for b in token_bytes], dtype=np.int32)
        self._off = np.concatenate([[0], np.cumsum(self._len)[:-1]]).astype(np.int64)
        self._flat = np.frombuffer(b"".join(token_bytes), dtype=np.uint8)
        nl_piece = any(b"\n" in b for b, byte in zip(token_bytes, self.is_byte) if not byte)
        self._raw = _RAW if nl_piece else _RAW_NL
        self._nl_sep = not nl_piece

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> Tokenizer:
        return cls(model_bytes)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.model_bytes)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id})"

    # -- decoding (normative: format_spec/tokenizer.md) ------------------------------------------

    def decode(self, ids) -> bytes:
        """Concatenate token_bytes of `ids` (any int array-like). Control/unknown ids give b""."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return b""
        ids = ids.reshape(-1)
        if ids.dtype.kind not in "iu":
            ids = ids.astype(np.int64)
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise FormatError(f"token id out of range 0..{self.vocab_size - 1}")
        lens = self._len[ids]
        out = np.empty(int(lens.sum(dtype=np.int64)), dtype=np.uint8)
        pos = 0
        # Blocks of _DECODE_BLOCK tokens bound the int64 index temporaries (8 bytes per output
        # byte) whatever the input size.
        for s in range(0, ids.size, _DECODE_BLOCK):
            block, blens = ids[s : s + _DECODE_BLOCK], lens[s : s + _DECODE_BLOCK]
            n = int(blens.sum())
            # Output byte k of token j comes from _flat[_off[id_j] + (k - start_j)]: one gather.
            starts = np.cumsum(blens, dtype=np.int64) - blens
            idx = np.arange(n, dtype=np.int64) + np.repeat(self._off[block] - starts, blens)
            out[pos : pos + n] = self._flat[idx]
            pos += n
        return out.tobytes()

    # -- encoding (non-normative: any ids whose decode equals the input are valid) --------------

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids (int32) with decode(ids) == data for every byte string; no control/unk ids."""
        data = bytes(data)
        if not data:
            return np.zeros(0, dtype=np.int32)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "surrogateescape")
        # The input is text runs separated by raw runs (written as byte tokens):
        # texts[0], raws[0], texts[1], ..., texts[-1], with len(texts) == len(raws) + 1.
        raws = self._raw.findall(text)
        raw_lens = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
        raw_joined = "".join(raws)
        if SPACE_SYMBOL in raw_joined:  # U+2581 is 3 bytes, every other raw character 1 byte
            at = [m.start() for m in re.finditer(SPACE_SYMBOL, raw_joined)]
            np.add.at(raw_lens, np.searchsorted(np.cumsum(raw_lens), at, side="right"), 2)
        raw_ids = self.byte_ids[
            np.frombuffer(raw_joined.encode("utf-8", "surrogateescape"), dtype=np.uint8)
        ]
        texts = flat = None
        if self._nl_sep:
            flat, text_lens = self._encode_joined(self._raw.sub("\n", text), len(raws))
        if flat is None:
            texts = self._raw.split(text)[0::2]
            cuts = [_cut(t) for t in texts]
            flat, cut_lens = self._encode_many(list(itertools.chain(*cuts)))
            first = np.cumsum([0] + [len(c) for c in cuts[:-1]])
            text_lens = np.add.reduceat(cut_lens, first)
        ids = _interleave(flat, text_lens, raw_ids, raw_lens)
        if self._valid(ids, data):
            return ids
        # Rare: some text run did not round-trip. Check each one, re-encode failures finer.
        texts = texts or self._raw.split(text)[0::2]
        flat, text_lens = _flatten(self._encode_checked(texts, 0))
        ids = _interleave(flat, text_lens, raw_ids, raw_lens)
        if not self._valid(ids, data):  # cannot happen: the last resort is byte tokens
            raise TokenizerError("internal error: encoding does not round-trip")
        return ids

    def _encode_joined(self, joined: str, n_raw: int):
        """Encode text runs joined by "\n" (one <0x0A> token each, as no piece has a newline).

        One sentencepiece call over ~8 KB chunks instead of one per run: inputs with many short
        runs (binary data) would otherwise spend seconds in per-call overhead. Returns (all text
        ids, ids per run) or (None, None) if the separators are not where they must be.
        """
        flat, _ = self._encode_many(_cut(joined))
        sep = np.flatnonzero(flat == self.byte_ids[10])
        if sep.size != n_raw:
            return None, None
        bounds = np.concatenate([[-1], sep, [flat.size]])
        return flat[flat != self.byte_ids[10]], np.diff(bounds) - 1

    def _encode_many(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all ids of texts concatenated, ids per text), sentencepiece called in batches."""
        flats, lens = [], []
        start = 0
        while start < len(texts):
            end, size = start, 0
            while end < len(texts) and (size < _ENCODE_BATCH or end == start):
                size += len(texts[end]) + 16  # + per-text overhead, for many tiny texts
                end += 1
            # num_threads=1: the caller owns parallelism; the result does not depend on it.
            f, n = _flatten(self._enc.encode(texts[start:end], num_threads=1))
            flats.append(f)
            lens.append(n)
            start = end
        if len(flats) == 1:
            return flats[0], lens[0]
        if not flats:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return np.concatenate(flats), np.concatenate(lens)

    def _encode_checked(self, texts: list[str], level: int) -> list[np.ndarray]:
        out = []
        for text, ids in zip(texts, self._enc.encode(texts, num_threads=1)):
            ids = np.array(ids, dtype=np.int32)
            if self._valid(ids, text.encode("utf-8")):
                out.append(ids)
            elif level < len(_SPLITS) and len(sub := _SPLITS[level](text)) > 1:
                out.append(np.concatenate(self._encode_checked(sub, level + 1)))
            elif level < len(_SPLITS) - 1:
                out.append(np.concatenate(self._encode_checked([text], level + 1)))
            else:
                out.append(self._raw_ids(text))
        return out

    def _raw_ids(self, text: str) -> np.ndarray:
        raw = np.frombuffer(text.encode("utf-8", "surrogateescape"), dtype=np.uint8)
        return self.byte_ids[raw]

    def _valid(self, ids: np.ndarray, data: bytes) -> bool:
        return not self.is_special[ids].any() and self.decode(ids) == data


def _cut(text: str) -> list[str]:
    """Cut text into pieces of <= _CHUNK characters: after a newline, else before a space."""
    if len(text) <= _CHUNK:
        return [text]
    out, start = [], 0
    while len(text) - start > _CHUNK:
        end = start + _CHUNK
        cut = text.rfind("\n", start, end) + 1 or text.rfind(" ", start + 1, end)
        if cut <= start:
            cut = end
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _flatten(id_lists: list) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated int32 ids, length of each list)."""
    lens = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    flat = np.fromiter(
        itertools.chain.from_iterable(id_lists), dtype=np.int32, count=int(lens.sum())
    )
    return flat, lens


def _interleave(flat, text_lens, raw_ids, raw_lens) -> np.ndarray:
    """Text run 0, raw run 0, text run 1, ..., last text run, as one int32 array."""
    if not raw_lens.size:
        return flat
    lens = np.empty(text_lens.size + raw_lens.size, dtype=np.int64)
    lens[0::2] = text_lens
    lens[1::2] = raw_lens
    is_raw = np.repeat((np.arange(lens.size) & 1).astype(np.bool_), lens)
    out = np.empty(is_raw.size, dtype=np.int32)
    out[~is_raw] = flat
    out[is_raw] = raw_ids
    return out


# -- rewriting the model proto for encoding (protobuf wire format, no protobuf dependency) -------

# ModelProto: 2 = trainer_spec, 3 = normalizer_spec, 5 = denormalizer_spec.
# TrainerSpec: 35 = byte_fallback. NormalizerSpec: 1 name, 2 precompiled_charsmap,
# 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces, 6 normalization_rule_tsv.


def _varint(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield (field number, raw encoded field, payload for length-delimited fields)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        payload = b""
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            payload = buf[pos : pos + n]
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf")
        yield key >> 3, buf[start:pos], payload


def _message(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _bool(field: int, value: bool) -> bytes:
    return _varint(field << 3) + (b"\x01" if value else b"\x00")


def _encoder_proto(model_bytes: bytes) -> bytes:
    """The model with identity normalization, no dummy prefix/whitespace removal, byte fallback."""
    out = bytearray()
    trainer = normalizer = b""
    for num, raw, payload in _fields(model_bytes):
        if num == 2:
            trainer = payload
        elif num == 3:
            normalizer = payload
        elif num != 5:  # the denormalizer only matters for sentencepiece's own decoding
            out += raw
    trainer = b"".join(raw for num, raw, _ in _fields(trainer) if num != 35) + _bool(35, True)
    # escape_whitespaces (5) is kept: it decides whether pieces spell a space as U+2581.
    kept = b"".join(raw for num, raw, _ in _fields(normalizer) if num == 5)
    normalizer = _message(1, b"identity") + _bool(3, False) + _bool(4, False) + kept
    return bytes(out + _message(2, trainer) + _message(3, normalizer))


# -- Parameter Golf byte counting (DESIGN.md section 5) ------------------------------------------


def golf_bytes_lut(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base_bytes int16, has_leading_space bool, is_boundary bool), each of shape [vocab_size].

    Same tables as openai/parameter-golf train_gpt.py build_sentencepiece_luts: control, unknown
    and unused ids are boundaries with 0 bytes; byte-fallback ids are 1 byte; any other piece is
    its UTF-8 length without one leading U+2581, plus 1 for that U+2581 unless the previous token
    is a boundary.
    """
    n = tok.vocab_size
    boundary = tok.is_special | tok.is_unused
    base = np.zeros(n, dtype=np.int16)
    lead = np.zeros(n, dtype=np.bool_)
    for i, piece in enumerate(tok.pieces):
        if boundary[i]:
            continue
        if tok.is_byte[i]:
            base[i] = 1
            continue
        if piece.startswith(SPACE_SYMBOL):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return base, lead, boundary.copy()


def golf_byte_counts(tok: Tokenizer, ids: np.ndarray, luts=None) -> np.ndarray:
    """Bytes each token counts for in golf val_bpb (int64, shape of ids, 1-D).

    The first token is treated as following a boundary (as after BOS), so its leading U+2581 is
    not counted. The tables (`golf_bytes_lut`) are cached on the tokenizer.
    """
    if luts is None:  # built once per tokenizer: the piece loop costs ~10 ms at vocab 8192
        luts = tok.__dict__.get("_golf_luts") or golf_bytes_lut(tok)
        tok._golf_luts = luts
    base, lead, boundary = luts
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    prev_boundary = np.empty(ids.size, dtype=np.bool_)
    prev_boundary[0] = True
    prev_boundary[1:] = boundary[ids[:-1]]
    return base[ids].astype(np.int64) + (lead[ids] & ~prev_boundary)


# -- training ------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _total_bytes(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.suffix != ".zst":
            total += p.stat().st_size
            continue
        with _open_text(p) as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total


def sample_lines(inputs: Iterable[str | os.PathLike], sample_bytes: int) -> Iterator[str]:
    """About `sample_bytes` of non-empty lines spread evenly over all inputs, in input order.

    Deterministic (no random numbers): a line is taken when the running share
    `bytes_seen * sample_bytes / total` passes the bytes taken so far, so every part of the input
    contributes in proportion to its size, not just the head.
    """
    paths = [Path(p) for p in inputs]
    total = _total_bytes(paths)
    rate = 1.0 if total <= sample_bytes else sample_bytes / total
    seen = taken = 0
    for p in paths:
        with _open_text(p) as raw:
            for line in io.BufferedReader(raw, 1 << 20) if p.suffix == ".zst" else raw:
                seen += len(line)
                if taken < seen * rate:
                    taken += len(line)
                    text = line.rstrip(b"\n").decode("utf-8", "replace")
                    if text:
                        yield text


def train_tokenizer(
    inputs: Iterable[str | os.PathLike],
    vocab_size: int,
    *,
    sample_bytes: int = 100_000_000,
    out_path: str | os.PathLike | None = None,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    max_sentence_length: int = 1 << 20,
    num_threads: int = 2,
) -> Tokenizer:
    """Train an lmzip sentencepiece model (identity normalization, byte fallback) on text files.

    Inputs are plain text or `.zst` files; lines are the training sentences (a newline is never
    inside a piece, so it encodes as the byte token <0x0A>). The sample is `sample_lines`, with no
    shuffling, so the same inputs and options give the same model bytes.
    """
    import sentencepiece as spm

    paths = [Path(p) for p in inputs]
    if not paths:
        raise TokenizerError("train_tokenizer needs at least one input file")
    sink = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sample_lines(paths, sample_bytes),
            model_writer=sink,
            model_type=model_type,
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=character_coverage,
            input_sentence_size=0,  # use every sampled line: sampling is ours, deterministic
            shuffle_input_sentence=False,
            max_sentence_length=max_sentence_length,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            num_threads=num_threads,
            minloglevel=2,  # sentencepiece logs every step to stderr otherwise
        )
    except RuntimeError as e:
        raise TokenizerError(f"sentencepiece training failed: {e}") from None
    tok = Tokenizer(sink.getvalue())
    if out_path is not None:
        # Write via a temp file so a crash never leaves a truncated model behind.
        out_path = Path(out_path)
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(tok.model_bytes)
        os.replace(tmp, out_path)
    return tok
