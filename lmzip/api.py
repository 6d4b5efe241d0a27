"""The library API: the only module that wires the pipeline stages together."""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import io
import itertools
import math
import multiprocessing as mp
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

import lmzip
from lmzip import coder, container, rowops, stream, transform
from lmzip.cpu_engine import CpuEngine, build_tables
from lmzip.describe import info  # noqa: F401  (lmzip.api.info, as before)
from lmzip.errors import FormatError, LmzipError, VersionError
from lmzip.mixer import GroupEncoder, MixDecoder, MixerParams, mix_decode_token, new_table
from lmzip.tables import exp_tables_np
from lmzip.tokenizer import Tokenizer
from lmzip.turns import new_turns, store_release, wait_turn


def _fixed_mmap_threshold() -> None:
    """glibc: fixed thresholds, so that the engine's temporaries are reused, not re-faulted.

    By default glibc raises its mmap threshold after each large free (up to 32 MiB) and trims the
    heap top above 128 KiB: small long-lived objects allocated between large freed blocks then
    kept the heap growing (verify workers reached 5 GB on 1 MiB chunks, ~8 KB per token), while
    serving every block of 1 MiB or more by mmap (the earlier fix) made each pass fault in all of
    its temporaries afresh: 135 page faults per token, about half of the compress time in the
    kernel on this VM. Now: blocks up to 32 MiB come from the heap and the heap keeps up to
    128 MiB of free space (the passes of `lm_probabilities` are sized so that their temporaries
    stay under 32 MiB); 3 faults per token, flat RSS (measured 2026-11-23, docs/reliability.md)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (the most glibc accepts on 64-bit)
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD; both no-ops on other libcs
    except (OSError, AttributeError):
        pass


_fixed_mmap_threshold()


# ---------------------------------------------------------------------------------------------
# Compression pipeline: bytes -> tokenizer -> engine tables -> (mixer | coder) -> stream records.
# A chunk (chunk_size input bytes) is coded independently; its tokens are split into LM segments
# of window-1 tokens, each read by the model after a BOS at position 0 (numerics.md "Windows").
# ---------------------------------------------------------------------------------------------

# Chunk size: adaptivity wants long chunks, decoding wants one chunk per core (each chunk decodes
# one token after another). The default splits a file of known size in two (the 2-core machine
# class), between 32 KiB and 4 MiB per chunk, the two halves one group sharing the mixer's table
# (MIXER_GROUP); input of unknown size (a pipe) gets 1 MiB chunks. It depends on the input size
# only, never on --threads or the machine: same input, same bytes.
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_AUTO_CHUNK_SIZE = 32 << 10  # a 64 kB file in two: decodes 1.4-1.5x faster, 0.7-0.8 % larger
MAX_AUTO_CHUNK_SIZE = 4 << 20
AUTO_CHUNK_ALIGN = 64 << 10  # halves of 1 MiB or more are rounded up to this,
SMALL_CHUNK_ALIGN = 4 << 10  # smaller ones to this: the two chunks stay within 4 KiB
DEFAULT_PRECISION = 24
DEFAULT_BATCH = lmzip.DEFAULT_BATCH
# LM windows per teacher-forced pass (at least one window of each chunk of a group): 2 x 511
# positions keep every temporary of a pass (the widest, [positions, vocab] int64, ~8 MB) under
# the mmap threshold above, so the heap reuses them. Smaller passes keep more of their
# temporaries in the caches: 2 windows compressed the first 400 kB of enwiki_gensim at 55.7-55.9
# KB/s in process against 51.1-52.5 with 4 and 50.1 with 8 (session 13, the same bytes).
FORWARD_WINDOWS = 2


# Mixer memory follows the data: the hashed context models get 2^hash_bits buckets of 32 bytes,
# 128 to 256 bytes per input byte of the largest chunk, between 2^16 (2 MiB, small inputs
# start fast) and 2^22 (128 MiB per chunk: the first 2.5 MB of shakespeare code 0.3 % smaller
# with 2^22 than with 2^21, the first 150 kB of lee_news 0.02 % smaller with 2^21 than with
# 2^20; benchmarks/results/mixer-2026-11-24-v3.md). The choice depends on the input size only,
# and the decoder reads it from the header.
MIXER_HASH_BITS = (16, 22)
# Consecutive chunks whose mixed streams share one bucket table (spec 4.2 of mixer.md): a file
# of two chunks codes 1.7-3 % smaller than with independent chunks (measured on the dev sets)
# and still decodes on two cores, the group's streams stepping together.
MIXER_GROUP = 2
# Mixer state a decoding worker keeps at once: a batch holds fewer streams when their hash
# tables would exceed this (files of 4 MiB chunks: 7 streams of 135 MB instead of 16).
DECODE_MIXER_BUDGET = 1 << 30


def mixer_params(chunk_len: int, n_chunks: int = 1) -> MixerParams:
    """The default mixer parameters for `n_chunks` chunks of at most `chunk_len` input bytes:
    groups of MIXER_GROUP chunks, the bucket table sized for a group's bytes."""
    lo, hi = MIXER_HASH_BITS
    group_len = max(1, chunk_len) * max(1, min(n_chunks, MIXER_GROUP))
    return MixerParams(hash_bits=min(max((group_len - 1).bit_length() + 3, lo), hi),
                       group=MIXER_GROUP)  # fmt: skip


def auto_chunk_size(total: int | None) -> int:
    """The default chunk size for an input of `total` bytes (None: unknown)."""
    if total is None:
        return DEFAULT_CHUNK_SIZE
    half = -(-total // 2)  # ceil(total / 2), rounded up to 64 KiB (4 KiB below 1 MiB)
    align = AUTO_CHUNK_ALIGN if half >= 1 << 20 else SMALL_CHUNK_ALIGN
    half = -(-half // align) * align
    return max(MIN_AUTO_CHUNK_SIZE, min(MAX_AUTO_CHUNK_SIZE, half))


@dataclass
class LoadedModel:
    path: str
    mf: container.ModelFile
    # or lmzip.engine.Engine (torch: the GPU, or where a CPU kernel failed its self-test); both
    # have the methods the pipeline calls
    engine: CpuEngine
    tokenizer: Tokenizer

    @property
    def model_id(self) -> bytes:  # as loaded and verified: ModelFile.model_id hashes every
        return bytes.fromhex(self.mf.verified_id or self.mf.model_id)  # tensor (~65 ms, golf)


def resolve_model_path(path: str | None) -> str:
    """None: the shipped default model; a path; or the name of a shipped model (`lmzip info`
    lists them), where no file of that name exists."""
    if path is None:
        default = container.default_model_path()
        if not default.is_file():
            raise LmzipError(f"no default model at {default} in this build; pass -m MODEL")
        return str(default)
    if not os.path.exists(path):
        named = _shipped_path(path)
        if named:
            return named
        shipped = container.shipped_models()
        names = f" (shipped models: {', '.join(shipped)})" if shipped else ""
        raise LmzipError(f"{path}: model file not found{names}")
    return path


def _shipped_path(name: str) -> str | None:
    """The path of the shipped model called `name`, if there is one."""
    path = container.shipped_models().get(name)
    return str(path) if path else None


def shipped_model_for(model_id: bytes) -> str | None:
    """The path of the shipped model with this id, if the package has one."""
    for path in container.shipped_models().values():
        try:
            if bytes.fromhex(container.read_model_header(path)["model_id"]) == model_id:
                return str(path)
        except (LmzipError, OSError, KeyError, ValueError):
            continue
    return None


def load_model(path: str | None = None, device: str = "cpu", matmul: str = "auto") -> LoadedModel:
    path = resolve_model_path(path)
    mf = container.load_model(path)
    try:
        tok = Tokenizer.from_bytes(mf.tokenizer)
    except LmzipError as e:
        raise FormatError(f"{path}: model's tokenizer is unusable: {e}") from None
    except (RuntimeError, ValueError, OSError) as e:  # sentencepiece: corrupt proto
        raise FormatError(f"{path}: model's tokenizer is corrupt ({type(e).__name__})") from None
    _check_config_bounds(path, mf.config)
    try:
        tables = build_tables(mf)
        if device == "cpu" and matmul == "auto" and CpuEngine.supports(tables):
            engine = CpuEngine(tables)  # no torch: about a second less start-up
        else:
            from lmzip.engine import Engine

            engine = Engine(mf, device=device, matmul=matmul, tables=tables)
    except FormatError as e:  # VersionError too; the engine does not know the file's name
        raise type(e)(f"{path}: {e}") from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, IndexError, KeyError) as e:
        # a hostile or broken config that slipped past ModelConfig.validate: still a bad file
        raise FormatError(f"{path}: model is unusable ({type(e).__name__}: {e})") from None
    return LoadedModel(path, mf, engine, tok)


# Sizes the engine allocates from the config alone, before the tensors can contradict it:
# per-layer lists (n_layer), RoPE tables and KV caches (seq_len x d_model). The golf baseline
# uses 9 layers and 1024 x 512 = 2^19; these bounds leave 32x room and cap those tables at
# hundreds of MB. Checked here so that a hostile model fails in milliseconds, not after
# allocating gigabytes (reliability.md "Hostile files").
MAX_LAYERS = 512
MAX_WINDOW_WIDTH = 1 << 24


def _check_config_bounds(path: str, cfg: dict) -> None:
    ints = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "mlp_mult", "seq_len",
            "logit_softcap", "block_bits", "embed_bits")  # fmt: skip
    for key in ints:
        v, low = cfg.get(key, 1), 0 if key == "logit_softcap" else 1
        if type(v) is not int or v < low:  # bool is an int subclass: `type(v) is int` skips it
            raise FormatError(f"{path}: model config {key}={v!r} is not a valid integer")
    for key in ("rope_base", "qk_gain_init"):
        if type(cfg.get(key, 1.0)) not in (int, float):
            raise FormatError(f"{path}: model config {key} is not a number")
    if cfg.get("n_layer", 1) > MAX_LAYERS:
        raise FormatError(f"{path}: model config n_layer {cfg['n_layer']} is over {MAX_LAYERS}")
    if cfg.get("seq_len", 1) * cfg.get("d_model", 1) > MAX_WINDOW_WIDTH:
        raise FormatError(f"{path}: model config seq_len x d_model is over {MAX_WINDOW_WIDTH}")


def _segments(n: int, seg: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + seg)) for s in range(0, n, seg)]


def _window_inputs(model: LoadedModel, segs: list[np.ndarray]) -> np.ndarray:
    """[BOS, t_0 .. t_{n-2}] per segment (int64), right-padded (causality makes padding inert)."""
    width = max(len(s) for s in segs)
    inp = np.zeros((len(segs), width), np.int64)
    inp[:, 0] = model.tokenizer.bos_id
    for j, s in enumerate(segs):
        inp[j, 1 : len(s)] = s[:-1]
    return inp


def lm_probabilities(model: LoadedModel, tokens: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Yield the engine's Q30 probability rows [n, V] of `tokens`, segment after segment."""
    for (p,) in _lm_blocks(model, [tokens], batch):
        yield p


def _forward_threads(model: LoadedModel) -> int:
    """Threads that run teacher-forced passes side by side, one numba thread each: numba's
    thread count (_turn_threads) with the CPU engine; 1 with the torch one (it has its own)."""
    return _turn_threads() if isinstance(model.engine, CpuEngine) else 1


class PassBlock(tuple):
    """_lm_blocks' item: every chunk's rows at one segment position (a view, or None past the
    chunk's end), and where they lie: p, the pass's Q30 rows [N, T, V]; wins[i], the window of
    chunk i in p (-1 past its end)."""

    p: np.ndarray
    wins: np.ndarray


def _lm_blocks(model: LoadedModel, toks: list, batch: int) -> Iterator[PassBlock]:
    """Yield, segment position after segment position (window - 1 tokens each), the tuple of
    every chunk's Q30 probability rows there (None past a chunk's end). Passes of a few windows
    run on _forward_threads threads at once, each pass on one core: a pass's kernels need no
    barrier between cores, so a third thread (the coder's) slows one pass, not both cores."""
    seg = model.engine.window - 1
    n_pos = max((-(-len(t) // seg) for t in toks), default=0)
    per = max(1, min(batch, FORWARD_WINDOWS) // max(1, len(toks)))  # positions per pass

    def run(k0):
        ks = range(k0, min(n_pos, k0 + per))
        at = [(k, i) for k in ks for i, t in enumerate(toks) if k * seg < len(t)]
        segs = [toks[i][k * seg : (k + 1) * seg] for k, i in at]
        p = model.engine.probs_np(_window_inputs(model, segs))
        where = {ki: j for j, ki in enumerate(at)}
        out = []
        for k in ks:
            wins = np.array([where.get((k, i), -1) for i in range(len(toks))], np.int64)
            b = PassBlock(None if j < 0 else p[j, : len(segs[j])] for j in wins)
            b.p, b.wins = p, wins
            out.append(b)
        return out

    starts = range(0, n_pos, per)
    threads = _forward_threads(model)
    if threads <= 1:
        for k0 in starts:
            yield from run(k0)
        return
    with cf.ThreadPoolExecutor(threads, thread_name_prefix="lmzip-forward",
                               initializer=rowops.set_threads, initargs=(1,)) as pool:  # fmt: skip
        pending: deque = deque()
        try:
            for k0 in starts:
                if len(pending) > threads:
                    yield from pending.popleft().result()
                pending.append(pool.submit(run, k0))
            while pending:
                yield from pending.popleft().result()
        finally:  # a consumer that stops early (an error, Ctrl-C) waits for running passes only
            for f in pending:
                f.cancel()


def _lm_symbols(p: np.ndarray, targets: np.ndarray, precision: int):
    """(cum, freq) of each target under the frequency table of its row of p (the coder's input)."""
    cum = np.empty(len(targets), np.int64)
    freq = np.empty(len(targets), np.int64)
    rowops.lm_symbols_rows(np.ascontiguousarray(p), targets.astype(np.int64), precision, cum, freq)
    return cum, freq


@dataclass
class ChunkCoding:
    """Everything one chunk's encoder learned: both payloads and their ideal costs in bits."""

    raw: bytes
    tokens: np.ndarray  # of the coded text: transform.forward(raw, transform)
    lm_payload: bytes
    lm_bits: float
    mix_payload: bytes | None
    mix_bits: float | None
    transform: int = 0  # transform.NONE or CRLF: the record's transform when coded

    def best(self) -> tuple[int, bytes]:
        options = [(len(self.raw), stream.METHOD_STORED, self.raw)]
        options.append((len(self.lm_payload), stream.METHOD_LM, self.lm_payload))
        if self.mix_payload is not None:
            options.append((len(self.mix_payload), stream.METHOD_MIXED, self.mix_payload))
        _, method, payload = min(options, key=lambda o: (o[0], o[1]))
        return method, payload

    def transform_of(self, method: int) -> int:
        """The record's transform field for a chunk written with `method`."""
        return transform.NONE if method == stream.METHOD_STORED else self.transform


def encode_chunk(
    model: LoadedModel, raw: bytes, precision: int, mixer: MixerParams | None, batch: int
) -> ChunkCoding:
    """One chunk coded alone (a group of one)."""
    return encode_group(model, [raw], precision, mixer, batch)[0]


def encode_group(
    model: LoadedModel, raws: list[bytes], precision: int, mixer: MixerParams | None, batch: int
) -> list[ChunkCoding]:
    """Code a group of consecutive chunks (mixer.group of them, the file's last group may be
    shorter): each chunk's LM payload, and the mixed payloads of the chunks that share the
    group's bucket table (format_spec/mixer.md 4.2). A chunk whose best method is not MIXED
    must not have fed the table: the group is mixed again without it (rare: only data the LM
    codes badly), until every sharing chunk is best coded MIXED."""
    tfs = [transform.choose(raw) for raw in raws]
    toks = [model.tokenizer.encode(transform.forward(raw, tf)) for raw, tf in zip(raws, tfs)]
    lm = [None] * len(raws)
    mix = [None] * len(raws)
    part = [i for i, t in enumerate(toks) if len(t)] if mixer is not None else []
    first = True
    while True:
        todo = range(len(raws)) if first else part
        lm_new, mix_new = _code_group(model, [toks[i] for i in todo],
                                      [i in part for i in todo], precision, mixer, batch)  # fmt: skip
        for j, i in enumerate(todo):
            if first:
                lm[i] = lm_new[j]
            mix[i] = mix_new[j]
        first = False
        if mixer is not None:  # an empty chunk's mixed payload is empty (it feeds nothing)
            mix = [b"" if not len(t) else m for t, m in zip(toks, mix)]
        codings = [ChunkCoding(raw, t, lm_p, lm_b, m, None if m is None else 8.0 * len(m), tf)
                   for raw, t, (lm_p, lm_b), m, tf in zip(raws, toks, lm, mix, tfs)]  # fmt: skip
        losers = [i for i in part if codings[i].best()[0] != stream.METHOD_MIXED]
        if len(part) <= 1 or not losers:
            return codings
        for i in losers:
            mix[i] = None
        part = [i for i in part if i not in losers]


def _code_group(model, toks: list, shares: list[bool], precision: int, mixer, batch: int):
    """LM payloads of all `toks` and mixed payloads (None where not `shares`) of the sharing
    ones, in one pass over the LM's probabilities."""
    v = model.engine.vocab_size
    # preallocated: a list of small per-window arrays, each allocated between the large freed
    # tables of a window batch, fragmented the heap of a worker by ~8 KB per token (measured)
    cums = [np.empty(len(t), np.int64) for t in toks]
    freqs = [np.empty(len(t), np.int64) for t in toks]
    mixed = [i for i, sh in enumerate(shares) if sh]
    genc = GroupEncoder(mixer, v, [len(toks[i]) for i in mixed]) if mixed else None

    def code_block(ps, at):
        """Table lookups and mixing of the blocks ps (one per chunk) at token position `at`."""
        for i, p in enumerate(ps):
            if p is not None:
                sl = slice(at, at + len(p))
                cums[i][sl], freqs[i][sl] = _lm_symbols(p, toks[i][sl], precision)
        if genc is not None:  # the mixer reads the pass's rows in place
            blocks = [ps[i] for i in mixed]
            genc.feed_pass(ps.p, ps.wins[mixed], [toks[i][at : at + len(b)] if b is not None
                                                  else None for i, b in zip(mixed, blocks)])  # fmt: skip

    # the blocks of one LM pass are coded (table lookups, mixer: serial, compiled without the
    # GIL) on a thread of their own while the LM's kernels compute the next pass; in order (one
    # thread), at most a pass of blocks in flight (memory). The segments of every chunk cover
    # the same positions (window - 1 tokens each), so the group's lock-step order holds block
    # by block.
    pending: deque = deque()
    pos = 0
    with cf.ThreadPoolExecutor(1, thread_name_prefix="lmzip-coder") as coder_thread:
        for ps in _lm_blocks(model, toks, batch):
            while len(pending) > FORWARD_WINDOWS:
                pending.popleft().result()
            pending.append(coder_thread.submit(code_block, ps, pos))
            pos += model.engine.window - 1
        while pending:
            pending.popleft().result()
    lm = []
    for cum, freq in zip(cums, freqs):
        payload = bytes(coder.encode_symbols(cum.astype(np.uint64), freq.astype(np.uint64),
                                             np.uint64(precision)))  # fmt: skip
        lm.append((payload, float(coder.ideal_bits(freq.astype(np.uint64), np.uint64(precision)))))
    mix = [None] * len(toks)
    if genc is not None:
        for i, payload in zip(mixed, genc.finish()):
            mix[i] = payload
    return lm, mix


class _Stream:
    """Decoding state of one coded chunk inside a batch of streams."""

    def __init__(self, record: stream.ChunkRecord, payload: bytes, mixer, vocab: int, mem=None):
        self.record, self.n = record, record.n_tokens
        self.tokens = np.zeros(self.n, np.int32)
        self.done = 0
        if record.method == stream.METHOD_MIXED:
            if mixer is None:
                raise FormatError("a mixed chunk in a file whose header has no mixer parameters")
            self.mix = MixDecoder(payload, mixer, vocab, self.n, mem)
        else:
            self.mix = None
            self.data = np.frombuffer(payload, np.uint8)
            self.st = coder.dec_new(self.data)


# One stream (a one-chunk file, or one chunk per worker) decodes in compiled slices of tokens:
# step, probabilities, and the mixer or table decoder, without a Python round trip per token
# (about 20 us of the ~220 us a token took). Slices keep Ctrl-C and progress responsive.
DECODE_SLICE = 256
# Batches of at most this many mixed streams (a file's groups) decode in compiled lock-step
# slices, their LM steps on numba's threads; larger batches in the loop of decode_chunks.
LOCKSTEP_MAX = 8


@njit(cache=True, inline="always")
def _next_row(io, step_args, kc, vc, step_tail):
    capped = rowops.step_all(io[0:1], io[1:2], *step_args, kc, vc, *step_tail)
    return rowops.probs_rows(capped, step_tail[4], step_tail[5], step_tail[6])[0]


@njit(cache=True, inline="always")
def _advance(io, out, tok, seg, bos):
    """Record tok and set the next step's input (a new LM window after every seg tokens)."""
    done = io[2]
    out[done] = tok
    done += 1
    io[2] = done
    if done % seg == 0:
        io[0], io[1] = bos, 0
    else:
        io[0], io[1] = tok, done % seg


@njit(cache=True, nogil=True)
def _decode_slice_mixed(count, io, out, seg, bos, step_args, kc, vc, step_tail, head, body, mem,
                        hist, cst, data):  # fmt: skip
    for _ in range(count):
        p = _next_row(io, step_args, kc, vc, step_tail)
        _advance(io, out, mix_decode_token(head, body, mem, hist, cst, data, p), seg, bos)


@njit(cache=True, nogil=True)
def _decode_slice_lm(count, io, out, seg, bos, step_args, kc, vc, step_tail, precision, st, data,
                     freq, work):  # fmt: skip
    for _ in range(count):
        p = _next_row(io, step_args, kc, vc, step_tail)
        _advance(io, out, rowops.decode_lm_row(p, precision, st, data, freq, work), seg, bos)


def _decode_single(model: LoadedModel, s: _Stream, precision: int) -> None:
    """Decode stream s alone with the compiled slices (engine.step_np's fused path)."""
    eng = model.engine
    state = eng.new_state(1)
    step_args, step_tail = eng.step_all_args()
    io = np.array([model.tokenizer.bos_id, 0, 0], np.int64)  # next input token, its position, done
    seg = eng.window - 1
    freq, work = np.empty(eng.vocab_size, np.int64), np.empty(eng.vocab_size + 1, np.uint64)
    while io[2] < s.n:
        count = min(DECODE_SLICE, s.n - int(io[2]))
        common = (count, io, s.tokens, seg, model.tokenizer.bos_id, step_args, state.k_np,
                  state.v_np, step_tail)  # fmt: skip
        if s.mix is not None:  # at most n tokens, the decoder's max_tokens: next()'s checks hold
            _decode_slice_mixed(*common, *s.mix.arrays)
        else:
            _decode_slice_lm(*common, precision, s.st, s.data, freq, work)
    s.done = s.n


@njit(cache=True, parallel=True, nogil=True)
def _decode_slice_lockstep(count, io, n, outs, seg, bos, step_args, kcs, vcs, step_tail, probs,
                           heads, bodies, mems, mem_of, hists, csts, datas, lens):  # fmt: skip
    """`count` lock-step positions of mixed streams g = 0..G-1 (file order): their LM steps in
    parallel (numba's threads; each stream has its own caches, so every row is computed by the
    same code as alone), then their tokens decoded one stream after the other in order, the
    order the group's shared bucket table is updated in (format_spec/mixer.md 4.2). Per-stream
    state is stacked in 2-D arrays: io[g] is _decode_single's io of stream g, payload g is
    datas[g, :lens[g]]."""
    g_n = io.shape[0]
    for _ in range(count):
        for g in prange(g_n):
            if io[g, 2] < n[g]:
                probs[g] = _next_row(io[g], step_args, kcs[g], vcs[g], step_tail)
        for g in range(g_n):
            if io[g, 2] < n[g]:
                tok = mix_decode_token(heads[g], bodies[g], mems[mem_of[g]], hists[g], csts[g],
                                       datas[g, : lens[g]], probs[g])  # fmt: skip
                _advance(io[g], outs[g], tok, seg, bos)


@njit(cache=True, nogil=True)
def _decode_slice_batched(count, io, n, outs, seg, bos, step_args, kc, vc, step_tail, inp,
                          heads, bodies, mems, mem_of, hists, csts, datas, lens):  # fmt: skip
    """_decode_slice_lockstep on one thread, the streams' LM steps as one batch: one step_all
    of G rows (kc, vc: the batch's caches, stream g in row g; each row is computed by the same
    code as alone), so the weights are read once per position for all streams. A stream that
    has ended steps on BOS at position 0 (its row is not used). inp: int64 [2, G] scratch."""
    g_n = io.shape[0]
    for _ in range(count):
        for g in range(g_n):
            live = io[g, 2] < n[g]
            inp[0, g] = io[g, 0] if live else bos
            inp[1, g] = io[g, 1] if live else 0
        capped = rowops.step_all(inp[0], inp[1], *step_args, kc, vc, *step_tail)
        probs = rowops.probs_rows(capped, step_tail[4], step_tail[5], step_tail[6])
        for g in range(g_n):
            if io[g, 2] < n[g]:
                tok = mix_decode_token(heads[g], bodies[g], mems[mem_of[g]], hists[g], csts[g],
                                       datas[g, : lens[g]], probs[g])  # fmt: skip
                _advance(io[g], outs[g], tok, seg, bos)


@njit(cache=True, nogil=True)
def _decode_slice_turn(count, g, io, n, outs, seg, bos, step_args, kcs, vcs, step_tail, probs,
                       heads, bodies, mems, mem_of, hists, csts, datas, lens, turn):  # fmt: skip
    """Stream g's part of `count` lock-step positions, on a thread of its own (_decode_lockstep):
    its LM step whenever its previous token is known, then its token decoded in its turn, slot
    tick * G + g of the turn counter (lmzip.turns), the order of _decode_slice_lockstep (a
    stream that has ended passes its turns). While one stream decodes its token, the others
    step: the mixing of all but one stream is hidden behind the LM steps. io[g, 3] counts the
    stream's positions (ticks)."""
    g_n = io.shape[0]
    for _ in range(count):
        tick = io[g, 3]
        live = io[g, 2] < n[g]
        if live:
            probs[g] = _next_row(io[g], step_args, kcs[g], vcs[g], step_tail)
        if not wait_turn(turn, tick * g_n + g):
            return  # another thread failed (turn[1] set): stop
        if live:
            tok = mix_decode_token(heads[g], bodies[g], mems[mem_of[g]], hists[g], csts[g],
                                   datas[g, : lens[g]], probs[g])  # fmt: skip
            _advance(io[g], outs[g], tok, seg, bos)
        io[g, 3] = tick + 1
        store_release(turn, 0, tick * g_n + g + 1)  # publishes the table updates with the turn


def _turn_threads() -> int:
    """Threads the lock-step streams may have to themselves: numba's (rowops.set_threads)."""
    import numba

    return numba.get_num_threads()


def _decode_lockstep(model: LoadedModel, streams: list) -> None:
    """Decode mixed streams together (CPU, fused engine): one thread per stream taking turns
    (_decode_slice_turn) where there are threads for all of them; on one thread, their steps
    as one batch (_decode_slice_batched); else the compiled lock-step slices on numba's
    threads (_decode_slice_lockstep). The same tokens in every case."""
    eng = model.engine
    step_args, step_tail = eng.step_all_args()
    g_n = len(streams)
    turns = g_n <= _turn_threads()
    batched = not turns and _turn_threads() == 1
    if batched:  # the batch's caches, stream g in row g
        state = eng.new_state(g_n)
        kcs, vcs = state.k_np, state.v_np
    else:  # each stream its own caches, stacked: kcs[g] is a one-stream cache
        one = eng.new_state(1)
        kcs = np.zeros((g_n,) + one.k_np.shape, one.k_np.dtype)
        vcs = np.zeros((g_n,) + one.v_np.shape, one.v_np.dtype)
        del one
    io = np.zeros((g_n, 4), np.int64)  # per stream: next input token, its position, done, ticks
    io[:, 0] = model.tokenizer.bos_id
    n = np.array([s.n for s in streams], np.int64)
    probs = np.empty((g_n, eng.vocab_size), np.int64)
    # stacked copies of the streams' fresh states (numba typed lists would compile anew in
    # every process); the shared tables once each
    tables, mem_of = [], np.zeros(g_n, np.int64)
    for g, s in enumerate(streams):
        j = next((j for j, m in enumerate(tables) if m is s.mix.mem), None)
        if j is None:
            j = len(tables)
            tables.append(s.mix.mem)
        mem_of[g] = j
    mems = np.stack(tables)
    del tables
    heads = np.stack([s.mix.head for s in streams])
    bodies = np.stack([s.mix.body for s in streams])
    hists = np.zeros((g_n, int(max(1, n.max()))), np.int32)
    csts = np.stack([s.mix.cst for s in streams])
    lens = np.array([len(s.mix.data) for s in streams], np.int64)
    datas = np.zeros((g_n, int(max(1, lens.max()))), np.uint8)
    for g, s in enumerate(streams):
        datas[g, : lens[g]] = s.mix.data
    outs = np.zeros((g_n, int(max(1, n.max()))), np.int32)
    seg, bos = eng.window - 1, model.tokenizer.bos_id
    tail = (probs, heads, bodies, mems, mem_of, hists, csts, datas, lens)
    turn = new_turns()
    with cf.ThreadPoolExecutor(g_n - 1 if turns else 1, thread_name_prefix="lmzip-stream") as pool:

        def run(count, g):
            try:
                _decode_slice_turn(count, g, io, n, outs, seg, bos, step_args, kcs, vcs,
                                   step_tail, *tail, turn)  # fmt: skip
            except BaseException:
                turn[1] = 1  # the other streams stop waiting for this one's turns
                raise

        while (io[:, 2] < n).any():
            count = min(DECODE_SLICE, int((n - io[:, 2]).max()))
            if batched:
                _decode_slice_batched(count, io, n, outs, seg, bos, step_args, kcs, vcs,
                                      step_tail, np.zeros((2, g_n), np.int64),
                                      *tail[1:])  # fmt: skip
                continue
            if not turns:
                _decode_slice_lockstep(count, io, n, outs, seg, bos, step_args, kcs, vcs,
                                       step_tail, *tail)  # fmt: skip
                continue
            others = [pool.submit(run, count, g) for g in range(1, g_n)]
            try:
                run(count, 0)
            finally:
                for f in others:  # all return: each ran its slice, or turn[1] stopped it
                    f.result()
    for g, s in enumerate(streams):
        s.tokens[:] = outs[g, : s.n]
        s.done = s.n


def decode_chunks(
    model: LoadedModel, items: list, precision: int, mixer: MixerParams | None
) -> list[bytes]:
    """Decode the coded chunks `items` [(record, payload) or (record, payload, group)] as one
    batch of streams, in file order. The mixed chunks of one group share a bucket table and
    step in lock-step (format_spec/mixer.md 4.2); without a group each chunk has its own."""
    eng, bos = model.engine, model.tokenizer.bos_id
    tables: dict = {}
    streams = []
    for j, (r, p, *grp) in enumerate(items):
        mem = None
        if r.method == stream.METHOD_MIXED and mixer is not None:
            mem = tables.setdefault(grp[0] if grp else ("own", j), new_table(mixer))
        streams.append(_Stream(r, p, mixer, eng.vocab_size, mem))
    live = [i for i, s in enumerate(streams) if s.n > 0]
    if len(live) == 1 and eng.step_all_ok():
        _decode_single(model, streams[live[0]], precision)
        return [model.tokenizer.decode(s.tokens) for s in streams]
    if 1 < len(live) <= LOCKSTEP_MAX and eng.step_all_ok() and all(
        streams[i].mix is not None for i in live
    ):
        _decode_lockstep(model, [streams[i] for i in live])
        return [model.tokenizer.decode(s.tokens) for s in streams]
    b, seg = len(streams), eng.window - 1
    state = eng.new_state(b)
    # the step reads these numpy arrays through zero-copy tensors; the loop writes them in place
    inp_np, pos_np = np.full(b, bos, np.int64), np.zeros(b, np.int64)
    freq, work = np.empty(eng.vocab_size, np.int64), np.empty(eng.vocab_size + 1, np.uint64)
    tables = exp_tables_np()
    while live:
        capped = eng.step_np(state, inp_np, pos_np)
        pn = rowops.probs_rows(np.ascontiguousarray(capped), *tables)
        for i in live:
            s = streams[i]
            if s.mix is None:
                tok = int(rowops.decode_lm_row(pn[i], precision, s.st, s.data, freq, work))
            else:  # at most n tokens, the decoder's max_tokens: MixDecoder.next's checks hold
                tok = int(mix_decode_token(*s.mix.arrays, pn[i]))
            s.tokens[s.done] = tok
            s.done += 1
            if s.done % seg == 0:
                inp_np[i], pos_np[i] = bos, 0
            else:
                inp_np[i], pos_np[i] = tok, s.done % seg
        live = [i for i in live if streams[i].done < streams[i].n]
    return [model.tokenizer.decode(s.tokens) for s in streams]


# ---------------------------------------------------------------------------------------------
# Files: chunking, worker processes, atomic output.
# ---------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(model_path: str, threads: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it (removes its temp
    # file, terminates the workers); a worker would only print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["model"] = load_model(model_path)
    _set_threads(threads, threads)


def _set_threads(torch_threads: int, kernel_threads: int) -> None:
    """Threads of the numba kernels, and of torch where the engine is the torch one (imported)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, torch_threads))
    rowops.set_threads(kernel_threads)


def _worker_encode(args):
    raws, precision, mixer_bytes, batch = args
    mixer = MixerParams.from_bytes(mixer_bytes) if mixer_bytes else None
    out = []
    for coding in encode_group(_WORKER["model"], raws, precision, mixer, batch):
        method, payload = coding.best()
        n_tok = 0 if method == stream.METHOD_STORED else len(coding.tokens)
        out.append((method, payload, n_tok, coding.transform_of(method)))
    return out


def _worker_decode(args):
    items, precision, mixer_bytes = args
    mixer = MixerParams.from_bytes(mixer_bytes) if mixer_bytes else None
    return decode_chunks(_WORKER["model"], items, precision, mixer)


def _run_ordered(fn, jobs: Iterator, workers: int, model: LoadedModel, threads: int,
                 kernel_threads: int | None = None):  # fmt: skip
    """Map fn over jobs in order, in this process or in `workers` processes, with a bounded
    number of jobs in flight (memory stays bounded by chunk and batch sizes)."""
    if workers <= 1:
        _WORKER["model"] = model
        # a single job in flight (one group, or a batch of streams): intra-op threads are the
        # only parallelism left; decoding passes 1 to torch (its small GEMMs do not pay for
        # threads) and the cores' count to the numba kernels (a group's lock-step LM steps)
        _set_threads(threads, threads if kernel_threads is None else kernel_threads)
        for job in jobs:
            yield fn(job)
        return
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(workers, ctx, _worker_init, (model.path, 1))
    finished = False
    try:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    finally:
        if not finished:
            # An error (a corrupt chunk, a worker's exception), Ctrl-C, SIGTERM or a consumer
            # that stopped early: kill the workers now. A plain shutdown would first finish every
            # job in flight, minutes of model work for output that is being thrown away.
            for proc in list((pool._processes or {}).values()):
                proc.terminate()
        pool.shutdown(wait=finished, cancel_futures=not finished)


@dataclass
class CodingOptions:
    threads: int = 0  # worker processes; 0 = one per CPU core
    batch_size: int = DEFAULT_BATCH  # streams (chunks) coded together, LM windows per pass
    chunk_size: int = 0  # input bytes per chunk; 0 = auto_chunk_size(input size)
    precision: int = DEFAULT_PRECISION
    lm_only: bool = False

    def chunk_bytes(self, total: int | None) -> int:
        return self.chunk_size or auto_chunk_size(total)

    def workers(self, n_jobs_hint: int) -> int:
        n = self.threads or (os.cpu_count() or 1)
        return max(1, min(n, n_jobs_hint))


def _remaining_size(f) -> int | None:
    """Bytes left in `f` when it is a regular file (also stdin redirected from one), else None."""
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - f.tell())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _read_chunks(f, size: int) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        while len(b) < size:  # pipes return short reads
            more = f.read(size - len(b))
            if not more:
                break
            b += more
        yield b


def _groups(it: Iterator, n: int) -> Iterator[list]:
    group = []
    for x in it:
        group.append(x)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def compress_stream(src, dst, model: LoadedModel, opts: CodingOptions, progress=None) -> dict:
    """Compress readable binary `src` into seekable writable `dst`; returns a summary."""
    remaining = _remaining_size(src)
    chunk_size = opts.chunk_bytes(remaining)
    longest = chunk_size if remaining is None else min(chunk_size, remaining)
    n_chunks = MIXER_GROUP if remaining is None else -(-remaining // chunk_size)
    mixer = None if opts.lm_only else mixer_params(longest, n_chunks)
    params = stream.StreamParams(
        model_id=model.model_id,
        numerics_version=model.mf.numerics_version,
        precision=opts.precision,
        chunk_size=chunk_size,
        window=model.engine.window,
        mixer=mixer.to_bytes() if mixer else b"",
    )
    writer = stream.StreamWriter(dst, params)
    hasher, total = stream.ContentHasher(), 0
    # one group of chunks per job (one chunk in --lm-only mode): groups are independent (the LM
    # windows inside a chunk are batched by opts.batch_size)
    groups = _groups(_read_chunks(src, chunk_size), mixer.group if mixer else 1)
    first = list(itertools.islice(groups, 8))
    workers = opts.workers(len(first))
    raws_by_job: deque = deque()

    def jobs():
        for g in itertools.chain(first, groups):
            raws_by_job.append(g)
            yield (g, opts.precision, params.mixer, opts.batch_size)

    methods = dict.fromkeys(stream.METHODS.values(), 0)
    threads = opts.threads or (os.cpu_count() or 1)
    for coded in _run_ordered(_worker_encode, jobs(), workers, model, threads):
        for raw, (method, payload, n_tok, tf) in zip(raws_by_job.popleft(), coded):
            rec = stream.ChunkRecord(method, len(raw), n_tok, len(payload),
                                     stream.chunk_checksum(raw), tf)  # fmt: skip
            writer.add_chunk(rec, payload)
            methods[stream.METHODS[method]] += 1
            hasher.update(raw)
            total += len(raw)
            if progress:
                progress(len(raw))
    size = writer.finish(total, hasher.digest())
    return {"original_size": total, "compressed_size": size, "chunks": methods}


def _decode_job(args):
    """Decode a run of consecutive records (whole groups: it starts at a multiple of the group
    size): stored ones pass through, coded ones as a batch."""
    items, precision, mixer_bytes = args
    group = MixerParams.from_bytes(mixer_bytes).group if mixer_bytes else 1
    coded = [(r, p, j // group) for j, (r, p) in enumerate(items)
             if r.method != stream.METHOD_STORED]  # fmt: skip
    decoded = iter(_worker_decode((coded, precision, mixer_bytes)) if coded else [])
    return [p if r.method == stream.METHOD_STORED else transform.inverse(next(decoded), r.transform)
            for r, p in items]  # fmt: skip


def check_compatible(header: stream.StreamHeader, model: LoadedModel) -> None:
    if header.numerics_version != model.mf.numerics_version:
        raise VersionError(f"file uses numerics version {header.numerics_version}; the model "
                           f"and this lmzip use {model.mf.numerics_version}")  # fmt: skip
    stream.check_model_id(header, model.model_id)
    if header.window != model.engine.window:
        raise FormatError(f"file was coded with window {header.window}, model has "
                          f"{model.engine.window}")  # fmt: skip
    if (
        header.precision > coder.PRECISION_MAX
        or (1 << header.precision) < 2 * model.engine.vocab_size
    ):
        raise FormatError(f"file's coding precision {header.precision} is unusable")
    if header.mixer:
        MixerParams.from_bytes(header.mixer)


def decompress_stream(src, write, model, opts: CodingOptions, progress=None) -> dict:
    """Decode the .lmz stream `src`; `write(bytes)` receives verified chunks in order. `model`: a
    LoadedModel, or a function of the stream header that loads one (see decompress_file)."""
    reader = stream.StreamReader(src)
    h = reader.header
    if not isinstance(model, LoadedModel):
        model = model(h)
    check_compatible(h, model)
    mixer_bytes = h.mixer
    hasher, total = stream.ContentHasher(), 0
    # streams per batch: up to batch_size, but spread so that every worker process decodes;
    # whole groups per batch (the chunks of a group step together)
    group = MixerParams.from_bytes(mixer_bytes).group if mixer_bytes else 1
    n_groups = -(-h.n_chunks // group)
    workers = opts.workers(n_groups)
    per_job = max(1, min(opts.batch_size, -(-h.n_chunks // workers)))
    if mixer_bytes:  # bounded mixer memory per worker
        per_job = max(1, min(per_job, DECODE_MIXER_BUDGET // MixerParams.from_bytes(mixer_bytes)
                             .memory_bytes(0)))  # fmt: skip
    per_job = -(-per_job // group) * group
    jobs = ((g, h.precision, mixer_bytes) for g in _groups(iter(reader), per_job))
    for group in _run_ordered(_decode_job, _tee_records(jobs, pending := deque()), workers,
                              model, 1, opts.threads or (os.cpu_count() or 1)):  # fmt: skip
        for (record, _), data in zip(pending.popleft(), group):
            stream.verify_chunk(record, data)
            hasher.update(data)
            write(data)
            total += len(data)
            if progress:
                progress(len(data))
    stream.check_content(h, hasher.digest())
    return {"original_size": total, "compressed_size": None, "n_chunks": h.n_chunks}


def _tee_records(jobs, pending: deque):
    for job in jobs:
        pending.append(job[0])
        yield job


def _open_input(path: str):
    if path == "-":
        return sys.stdin.buffer
    if os.path.isdir(path):
        raise LmzipError(f"{path}: is a directory")
    if not os.path.exists(path):
        raise LmzipError(f"{path}: no such file")
    return open(path, "rb")


class AtomicOutput:
    """A temp file beside the destination, renamed over it only on success; removed on any
    failure or interruption, so no partial output is ever left under the final name."""

    def __init__(self, path: str, force: bool):
        self.path = path
        if path != "-":
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise LmzipError(f"{path}: output directory does not exist")
            if os.path.exists(path) and not force:
                raise LmzipError(f"{path}: already exists (use -f to overwrite)")
            if os.path.isdir(path):
                raise LmzipError(f"{path}: is a directory")
        else:
            d = None
        fd, self.tmp = tempfile.mkstemp(prefix=".lmzip-", suffix=".tmp", dir=d)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get normal permissions
        self.f = os.fdopen(fd, "w+b")

    def commit(self) -> None:
        self.f.flush()
        if self.path == "-":
            self.f.seek(0)
            shutil.copyfileobj(self.f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            self.f.close()
            os.unlink(self.tmp)
        else:
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def _same_file(a: str, b: str) -> bool:
    return a != "-" and b != "-" and os.path.exists(b) and os.path.samefile(a, b)


def _disk_full(e: OSError) -> LmzipError:
    return LmzipError(f"write failed: {e.strerror or e} (disk full?)")


def compress_file(input: str, output: str, model: str | None = None, opts: CodingOptions = None,
                  force: bool = False, progress=None) -> dict:  # fmt: skip
    opts = opts or CodingOptions()
    return _to_output(input, output, force,
                      lambda src, f: compress_stream(src, f, load_model(model), opts, progress))  # fmt: skip


def _to_output(input: str, output: str, force: bool, work) -> dict:
    """Run work(src, out_file) with the input open and the output staged atomically."""
    src = _open_input(input)
    try:
        if _same_file(input, output):
            raise LmzipError(f"{output}: output would overwrite the input")
        out = AtomicOutput(output, force)
        try:
            summary = work(src, out.f)
            out.commit()
        except BaseException as e:
            out.abort()
            if isinstance(e, OSError) and e.errno == 28:
                raise _disk_full(e) from None
            raise
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    return summary


def decompress_file(input: str, output: str | None, model: str | None = None,
                    opts: CodingOptions = None, force: bool = False, progress=None) -> dict:  # fmt: skip
    """output=None: decode and verify only (--test). model=None: the shipped model the file was
    compressed with (by the model id in its header), else the default model."""
    opts = opts or CodingOptions()

    def lm(header: stream.StreamHeader) -> LoadedModel:
        if model is None:
            return load_model(shipped_model_for(header.model_id))
        return load_model(model)

    if output is None:
        src = _open_input(input)
        try:
            return _decompress_named(input, src, lambda b: None, lm, opts, progress)
        finally:
            if src is not sys.stdin.buffer:
                src.close()
    return _to_output(input, output, force, lambda src, f: _decompress_named(
        input, src, f.write, lm, opts, progress))  # fmt: skip


def _decompress_named(name: str, src, write, lm, opts, progress) -> dict:
    """decompress_stream, with the input's name in front of every error about the input."""
    try:
        return decompress_stream(src, write, lm, opts, progress)
    except LmzipError as e:
        raise type(e)(f"{'<stdin>' if name == '-' else name}: {e}") from None


def default_output(input: str, decompress: bool) -> str:
    if input == "-":
        return "-"
    if not decompress:
        return input + ".lmz"
    if not input.endswith(".lmz"):
        raise LmzipError(f"{input}: does not end in .lmz; give the output name with -o")
    return input[: -len(".lmz")]


# ---------------------------------------------------------------------------------------------
# verify: reported bits per byte against real compressed bytes.
# ---------------------------------------------------------------------------------------------


def _worker_verify(args):
    """Per chunk: both payloads, their ideal costs, and the float reference's nats."""
    import torch

    from lmzip.export import gpt_from_model_file
    from lmzip.model import token_nll
    from lmzip.tokenizer import golf_byte_counts

    raws, precision, mixer_bytes, batch = args
    lm = _WORKER["model"]
    if "reference" not in _WORKER:
        _WORKER["reference"] = gpt_from_model_file(lm.mf)
    mixer = MixerParams.from_bytes(mixer_bytes)
    bos, seg = lm.tokenizer.bos_id, lm.engine.window - 1
    out = []
    for c in encode_group(lm, raws, precision, mixer, batch):
        nats, golf = 0.0, 0
        segs = [c.tokens[a:b] for a, b in _segments(len(c.tokens), seg)]
        for i in range(0, len(segs), batch):
            group = segs[i : i + batch]
            inp = _window_inputs(lm, group)
            full = np.concatenate([inp, np.zeros((len(group), 1), np.int64)], axis=1)
            for j, s in enumerate(group):
                full[j, 1 : len(s) + 1] = s
            nll = token_nll(_WORKER["reference"], torch.from_numpy(full))
            for j, s in enumerate(group):
                nats += float(nll[j, : len(s)].sum())
                golf += int(golf_byte_counts(lm.tokenizer, np.r_[bos, s])[1:].sum())
        out.append((c.lm_payload, c.mix_payload, len(c.tokens), c.lm_bits, nats, golf,
                    c.transform))  # fmt: skip
    return out


def _verify_inputs(path: str, tok: Tokenizer) -> bytes:
    """The bytes verify measures: a file as is; .jsonl texts and .bin shard documents joined."""
    from lmzip import data

    if path.endswith(".bin"):
        return b"".join(tok.decode(d) for d in data.iter_shard_documents(path, tok.bos_id))
    if path.endswith((".jsonl", ".jsonl.zst")):
        with data.open_bytes(path) as f:
            return b"".join(data.iter_jsonl(f))
    with open(_open_input(path).name, "rb") as f:
        return f.read()


def verify_file(path: str, lm: LoadedModel, opts: CodingOptions, roundtrip: bool = True) -> dict:
    """Compress `path` in both modes, decompress both files (unless not `roundtrip`), and
    compare every measure."""
    import io

    raw = _verify_inputs(path, lm.tokenizer)
    size = opts.chunk_bytes(len(raw))
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    mixer = mixer_params(min(size, len(raw)), len(chunks))
    groups = list(_groups(iter(chunks), mixer.group))
    jobs = ((g, opts.precision, mixer.to_bytes(), opts.batch_size) for g in groups)
    workers = opts.workers(len(groups))  # one group per job, as compress_stream
    threads = opts.threads or (os.cpu_count() or 1)
    results = [r for group in _run_ordered(_worker_verify, jobs, workers, lm, threads)
               for r in group]  # fmt: skip
    files = {}
    for mode in ("mixed", "lm_only"):
        params = stream.StreamParams(lm.model_id, lm.mf.numerics_version, opts.precision,
                                     size, lm.engine.window,
                                     mixer.to_bytes() if mode == "mixed" else b"")  # fmt: skip
        buf = io.BytesIO()
        w = stream.StreamWriter(buf, params)
        for rawc, (lm_pay, mix_pay, ntok, *_, tf) in zip(chunks, results):
            opts_ = [
                (len(rawc), stream.METHOD_STORED, rawc),
                (len(lm_pay), stream.METHOD_LM, lm_pay),
            ]
            if mode == "mixed" and mix_pay is not None:  # None: not in its group's table
                opts_.append((len(mix_pay), stream.METHOD_MIXED, mix_pay))
            _, method, pay = min(opts_, key=lambda o: (o[0], o[1]))
            stored = method == stream.METHOD_STORED
            w.add_chunk(stream.ChunkRecord(method, len(rawc), 0 if stored else ntok, len(pay),
                                           stream.chunk_checksum(rawc), 0 if stored else tf),
                        pay)  # fmt: skip
        h = stream.ContentHasher()
        h.update(raw)
        w.finish(len(raw), h.digest())
        files[mode] = buf.getvalue()
    ok = {"mixed": None, "lm_only": None}
    for mode, blob in files.items() if roundtrip else ():
        out = io.BytesIO()
        decompress_stream(io.BytesIO(blob), out.write, lm, opts)
        ok[mode] = out.getvalue() == raw
    n = max(1, len(raw))
    tokens = sum(r[2] for r in results)
    golf = sum(r[5] for r in results)
    lm_bits = sum(r[3] for r in results)
    # a chunk left out of its group's table (its best method is not MIXED) counts as coded
    mix_bits = sum(8.0 * (len(r[1]) if r[1] is not None else min(len(r[0]), len(c)))
                   for c, r in zip(chunks, results))  # fmt: skip
    return {
        "file": path,
        "bytes": len(raw),
        "tokens": tokens,
        "golf_bytes": golf,
        # the float reference over the same bytes; model_bpb_golf uses the Parameter Golf byte
        # rule, which counts every U+2581 after the first of a piece as 3 bytes (golf's
        # tokenizers have no such pieces, lmzip's whitespace pieces do)
        "model_bpb": sum(r[4] for r in results) / math.log(2) / n,
        "model_bpb_golf": sum(r[4] for r in results) / math.log(2) / max(1, golf),
        "engine_bpb": lm_bits / n,
        "mixed_bpb": mix_bits / n,
        "real_bpb": 8 * len(files["mixed"]) / n,
        "real_bpb_lm_only": 8 * len(files["lm_only"]) / n,
        "compressed_bytes": len(files["mixed"]),
        "compressed_bytes_lm_only": len(files["lm_only"]),
        "roundtrip_ok": ok["mixed"] and ok["lm_only"] if roundtrip else None,
    }


def verify(
    paths: list[str], model: str | None = None, opts: CodingOptions = None, roundtrip: bool = True
) -> dict:
    opts = opts or CodingOptions()
    lm = load_model(model)
    rows = [verify_file(p, lm, opts, roundtrip) for p in paths]
    tot = {k: sum(r[k] for r in rows) for k in ("bytes", "tokens", "golf_bytes",
                                                "compressed_bytes", "compressed_bytes_lm_only")}  # fmt: skip
    n = max(1, tot["bytes"])
    for k, src in (("engine_bpb", "engine_bpb"), ("mixed_bpb", "mixed_bpb")):
        tot[k] = sum(r[src] * r["bytes"] for r in rows) / n
    tot["model_bpb"] = sum(r["model_bpb"] * r["golf_bytes"] for r in rows) / max(
        1, tot["golf_bytes"]
    )
    tot["real_bpb"] = 8 * tot["compressed_bytes"] / n
    tot["real_bpb_lm_only"] = 8 * tot["compressed_bytes_lm_only"] / n
    tot["roundtrip_ok"] = all(r["roundtrip_ok"] for r in rows) if roundtrip else None
    return {"model_id": lm.mf.model_id, "files": rows, "total": tot}
