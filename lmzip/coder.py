"""48-bit LZMA-style range coder (normative: format_spec/coder.md).

The njit core (``enc_*``, ``dec_*``) is meant to be called from other numba code inside its own
loops; it keeps its state in small uint64 arrays and does no argument checking beyond what keeps
it finite and in bounds. ``Encoder`` and ``Decoder`` wrap it for Python callers and validate.

Invariants (format_spec/coder.md sections 2 and 3):
- encoder: 2^40 <= range <= 2^48 - 1 between symbols; low < 2^49 (bit 48 is the carry).
- decoder: 2^40 <= range <= 2^48 - 1 between symbols; code < 2^48 (masked, so corrupt input
  cannot grow it); for a valid stream code < range.
- bytes written + cache_size == ShiftLow calls + 1 (the +1 is the omitted leading zero byte).

Every quantity is uint64 inside the core: numba turns mixed uint64/int64 arithmetic into float64.
"""

import numpy as np
from numba import njit

PRECISION_MAX = 24
FLUSH_BYTES = 6  # the whole 48-bit low; spec section 6
_U8 = np.uint64(8)
_U40 = np.uint64(40)
_U48 = np.uint64(48)
_BYTE = np.uint64(0xFF)
_MASK40 = np.uint64((1 << 40) - 1)
_MASK48 = np.uint64((1 << 48) - 1)
_TOP = np.uint64(1 << 40)  # renormalize while range < 2^40
_FF_LOW = np.uint64(0xFF << 40)  # low in [0xFF << 40, 2^48): top byte 0xFF, carry undecided

# Encoder state indices: uint64[5].
_LOW, _RANGE, _CACHE, _CACHE_SIZE, _SKIP = 0, 1, 2, 3, 4
# Decoder state indices: uint64[4].
_CODE, _DRANGE, _POS, _OVERRUN = 0, 1, 2, 3


def max_encoded_size(n_symbols: int, precision: int) -> int:
    """Worst-case stream length: n symbols at precision P need at most n*ceil(P/8) + 6 bytes."""
    return n_symbols * ((precision + 7) // 8) + FLUSH_BYTES


@njit(cache=True)
def enc_new():
    st = np.zeros(5, dtype=np.uint64)
    st[_RANGE] = _MASK48
    st[_CACHE_SIZE] = 1  # the pending cache byte is the leading zero that is never written
    st[_SKIP] = 1
    return st


@njit(cache=True)
def enc_put(st, out, pos, cum, freq, P):
    """Code the subinterval [cum, cum+freq) of 2^P; returns the new write position.

    Requires 1 <= freq, cum + freq <= 2^P, 1 <= P <= 24. Writes at most ceil(P/8) bytes beyond
    the bound of previous calls (spec section 7); if out is too small nothing is written out of
    bounds and the returned pos exceeds len(out), which makes the stream invalid.
    """
    r = st[_RANGE] >> np.uint64(P)
    low = st[_LOW] + r * np.uint64(cum)
    rng = r * np.uint64(freq)
    if rng - np.uint64(1) >= _MASK48:  # freq 0 or too large: keep the loop finite, not decodable
        rng = _MASK48
    while rng < _TOP:
        rng <<= _U8
        # LZMA ShiftLow, written inline: a call passing arrays costs a refcount pair per byte
        # (measured 5x slower). The byte leaving the window is final unless it is 0xFF with no
        # carry yet: a later carry would turn it (and the pending run) into 0x00, +1 on cache.
        if low < _FF_LOW or low > _MASK48:
            carry = low >> _U48  # 0 or 1 because low < 2^49
            b = st[_CACHE] + carry
            n = st[_CACHE_SIZE]
            while n != np.uint64(0):
                if st[_SKIP] != 0:
                    st[_SKIP] = 0  # spec section 5: always 0, the decoder assumes it
                else:
                    if pos < out.shape[0]:  # never write out of bounds; caller sees pos > len
                        out[pos] = np.uint8(b & _BYTE)
                    pos += 1
                b = _BYTE + carry
                n -= np.uint64(1)
            st[_CACHE] = (low >> _U40) & _BYTE
            st[_CACHE_SIZE] = 0
        st[_CACHE_SIZE] += np.uint64(1)
        low = (low & _MASK40) << _U8
    st[_LOW] = low
    st[_RANGE] = rng
    return pos


@njit(cache=True)
def enc_finish(st, out, pos):
    # The flush is seven ShiftLows with low unchanged (spec section 6): six move the 48 bits of low
    # out through the cache, the seventh (low == 0) writes the last of them. Coding [0, 1) leaves
    # low as is; with range in [2^40, 2^48) it takes exactly 3 shifts at P = 24 (r in [2^16,
    # 2^24)) and exactly 1 at P = 8 (r in [2^32, 2^40)): 3 + 3 + 1 = 7, one ShiftLow to maintain.
    pos = enc_put(st, out, pos, 0, 1, 24)
    pos = enc_put(st, out, pos, 0, 1, 24)
    return enc_put(st, out, pos, 0, 1, 8)


@njit(cache=True)
def _shift_in(st, data, n):
    # Read n bytes into code (zeros past the end, counted). Only dec_new calls this; dec_advance
    # has its own copy inline because a call passing arrays costs a refcount pair per byte.
    code = st[_CODE]
    for _ in range(n):
        p = st[_POS]
        st[_POS] = p + np.uint64(1)
        b = np.uint64(0)
        if p < np.uint64(data.shape[0]):
            b = np.uint64(data[p])
        else:
            st[_OVERRUN] += np.uint64(1)
        code = ((code << _U8) | b) & _MASK48
    st[_CODE] = code


@njit(cache=True)
def dec_new(data):
    st = np.zeros(4, dtype=np.uint64)
    st[_DRANGE] = _MASK48
    _shift_in(st, data, FLUSH_BYTES)  # the omitted leading zero byte is implied, not read
    return st


@njit(cache=True)
def dec_target(st, P):
    """The value in [0, 2^P) that selects the symbol: cum[s] <= target < cum[s] + freq[s]."""
    t = st[_CODE] // (st[_DRANGE] >> np.uint64(P))
    top = (np.uint64(1) << np.uint64(P)) - np.uint64(1)
    return np.int64(min(t, top))  # t > top only when code >= range: a corrupt stream


@njit(cache=True)
def dec_advance(st, data, cum, freq, P):
    r = st[_DRANGE] >> np.uint64(P)
    code = st[_CODE] - r * np.uint64(cum)
    rng = r * np.uint64(freq)
    if rng - np.uint64(1) >= _MASK48:  # same guard as the encoder: finite on any input
        rng = _MASK48
    while rng < _TOP:
        rng <<= _U8
        p = st[_POS]
        st[_POS] = p + np.uint64(1)
        b = np.uint64(0)
        if p < np.uint64(data.shape[0]):  # never read past the end: feed zeros, count them
            b = np.uint64(data[p])
        else:
            st[_OVERRUN] += np.uint64(1)
        code = ((code << _U8) | b) & _MASK48  # the mask keeps corrupt input bounded
    st[_CODE] = code & _MASK48
    st[_DRANGE] = rng


@njit(cache=True)
def dec_symbol(st, data, cumtable, P):
    """Decode one symbol with cumtable[V+1] (cumtable[0] = 0, cumtable[V] = 2^P, nondecreasing)."""
    t = dec_target(st, P)
    # Largest s in [0, V) with cumtable[s] <= t; it has cumtable[s+1] > t, so freq >= 1 and
    # zero-frequency symbols (equal neighbours) are never chosen. Branchless (a select, not a
    # jump): the comparisons are unpredictable, and this halved the decode time.
    lo = 0
    m = cumtable.shape[0] - 1  # the answer lies in [lo, lo + m)
    while m > 1:
        half = m >> 1
        lo = lo + half if cumtable[lo + half] <= t else lo
        m -= half
    c = cumtable[lo]
    dec_advance(st, data, c, cumtable[lo + 1] - c, P)
    return lo


@njit(cache=True)
def dec_overrun(st):
    """Bytes read past the end of data (as zeros). Nonzero means truncated or corrupt input."""
    return np.int64(st[_OVERRUN])


@njit(cache=True)
def dec_position(st):
    """Bytes consumed (implied leading zero excluded); equals len(data) after a valid stream."""
    return np.int64(st[_POS])


@njit(cache=True)
def encode_symbols(cum, freq, P):
    """Encode arrays cum[N], freq[N] at one precision; returns the stream as uint8[:]."""
    n = cum.shape[0]
    # int64 on purpose: a uint64 P would turn the size into float64 (numba's mixed-sign rule).
    out = np.empty(n * ((np.int64(P) + 7) // 8) + FLUSH_BYTES, dtype=np.uint8)
    st = enc_new()
    pos = 0
    for i in range(n):
        pos = enc_put(st, out, pos, cum[i], freq[i], P)
    pos = enc_finish(st, out, pos)
    return out[:pos].copy()


@njit(cache=True)
def decode_loop_shared(st, data, cumtable, n, P):
    """n symbols, all with cumtable[V+1]; continues from decoder state st."""
    syms = np.empty(n, dtype=np.int64)
    for i in range(n):
        syms[i] = dec_symbol(st, data, cumtable, P)
    return syms


@njit(cache=True)
def decode_loop_rows(st, data, cumtables, n, P):
    """n symbols, row i of cumtables[N, V+1] for symbol i; continues from decoder state st."""
    syms = np.empty(n, dtype=np.int64)
    for i in range(n):
        syms[i] = dec_symbol(st, data, cumtables[i], P)
    return syms


def decode_symbols(data, cumtables, n, P):
    """Decode n symbols with one cumtable[V+1] or per-symbol cumtables[n, V+1].

    Returns (symbols int64[n], overrun); overrun != 0 means the data was truncated or corrupt.
    A shared table has its own loop: slicing a row per symbol costs about a third of the time.
    """
    data = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    tables = np.ascontiguousarray(cumtables, dtype=np.int64)
    st = dec_new(data)
    if tables.ndim == 1:
        syms = decode_loop_shared(st, data, tables, n, P)
    elif tables.shape[0] < n:
        raise ValueError(f"need {n} cumtables, got {tables.shape[0]}")
    else:
        syms = decode_loop_rows(st, data, tables, n, P)
    return syms, int(dec_overrun(st))


@njit(cache=True)
def ideal_bits(freq, P):
    """Information content of coding the given frequencies: sum of P - log2(freq)."""
    total = 0.0
    for i in range(freq.shape[0]):
        total += P - np.log2(np.float64(freq[i]))
    return total


def _check_precision(precision: int) -> int:
    if not isinstance(precision, (int, np.integer)) or not 1 <= precision <= PRECISION_MAX:
        raise ValueError(f"precision must be an integer in [1, {PRECISION_MAX}], got {precision}")
    return int(precision)


def _check_intervals(cums, freqs, precision: int) -> None:
    if cums.shape != freqs.shape:
        raise ValueError(f"cum and freq shapes differ: {cums.shape} vs {freqs.shape}")
    if cums.size and (freqs.min() < 1 or cums.min() < 0 or (cums + freqs).max() > 1 << precision):
        raise ValueError(f"need freq >= 1, cum >= 0 and cum + freq <= 2^{precision}")


def _check_cumtable(cumtable, precision: int) -> np.ndarray:
    t = np.ascontiguousarray(cumtable, dtype=np.int64)
    if t.ndim != 1 or t.shape[0] < 2 or t[0] != 0 or t[-1] != 1 << precision:
        raise ValueError(f"cumtable must be 1-D [V+1], V >= 1, from 0 to 2^{precision}")
    if np.any(np.diff(t) < 0):
        raise ValueError("cumtable must be nondecreasing")
    return t


class Encoder:
    """Range encoder at a fixed precision P: encode intervals, then finish() -> bytes."""

    def __init__(self, precision: int = 16):
        self.precision = _check_precision(precision)
        self._st = enc_new()
        self._out = np.empty(4096, dtype=np.uint8)
        self._pos = 0
        self._finished = False

    def _reserve(self, n_symbols: int) -> None:
        # Bytes still to come are at most pending (cache_size) + ceil(P/8) per symbol + flush.
        need = self._pos + int(self._st[_CACHE_SIZE]) + max_encoded_size(n_symbols, self.precision)
        if need > self._out.shape[0]:
            grown = np.empty(max(need, 2 * self._out.shape[0]), dtype=np.uint8)
            grown[: self._pos] = self._out[: self._pos]
            self._out = grown

    def encode(self, cum: int, freq: int) -> None:
        if self._finished:
            raise ValueError("encoder already finished")
        if not (freq >= 1 and cum >= 0 and cum + freq <= 1 << self.precision):
            raise ValueError(f"need freq >= 1, cum >= 0, cum + freq <= 2^{self.precision}")
        self._reserve(1)
        self._pos = enc_put(self._st, self._out, self._pos, int(cum), int(freq), self.precision)

    def encode_array(self, cums, freqs) -> None:
        if self._finished:
            raise ValueError("encoder already finished")
        cums = np.ascontiguousarray(cums, dtype=np.int64)
        freqs = np.ascontiguousarray(freqs, dtype=np.int64)
        _check_intervals(cums, freqs, self.precision)
        self._reserve(cums.shape[0])
        self._pos = _enc_put_array(self._st, self._out, self._pos, cums, freqs, self.precision)

    def finish(self) -> bytes:
        if self._finished:
            raise ValueError("encoder already finished")
        self._reserve(0)
        self._pos = enc_finish(self._st, self._out, self._pos)
        self._finished = True
        assert self._pos <= self._out.shape[0], "range coder buffer bound violated"
        return self._out[: self._pos].tobytes()


@njit(cache=True)
def _enc_put_array(st, out, pos, cums, freqs, P):
    for i in range(cums.shape[0]):
        pos = enc_put(st, out, pos, cums[i], freqs[i], P)
    return pos


class Decoder:
    """Range decoder over one stream at a fixed precision P (the encoder's)."""

    def __init__(self, data: bytes, precision: int = 16):
        self.precision = _check_precision(precision)
        self._data = np.frombuffer(bytes(data), dtype=np.uint8)
        self._st = dec_new(self._data)

    def decode(self, cumtable) -> int:
        t = _check_cumtable(cumtable, self.precision)
        return int(dec_symbol(self._st, self._data, t, self.precision))

    def decode_array(self, cumtables, n: int) -> np.ndarray:
        """n symbols with one cumtable[V+1] for all or cumtables[n, V+1], one row per symbol."""
        tables = np.asarray(cumtables, dtype=np.int64)
        rows = np.ascontiguousarray(tables[None, :] if tables.ndim == 1 else tables)
        bad = rows.ndim != 2 or rows.shape[1] < 2 or np.any(rows[:, 0] != 0)
        if bad or np.any(rows[:, -1] != 1 << self.precision) or np.any(np.diff(rows) < 0):
            raise ValueError(f"cumtables must be nondecreasing rows from 0 to 2^{self.precision}")
        if tables.ndim != 1 and rows.shape[0] < n:
            raise ValueError(f"need {n} cumtables, got {rows.shape[0]}")
        if tables.ndim == 1:
            return decode_loop_shared(self._st, self._data, rows[0], n, self.precision)
        return decode_loop_rows(self._st, self._data, rows, n, self.precision)

    def target(self) -> int:
        return int(dec_target(self._st, self.precision))

    def advance(self, cum: int, freq: int) -> None:
        """Consume the symbol [cum, cum+freq), which must contain target()."""
        t = self.target()
        if not (freq >= 1 and cum <= t < cum + freq and cum + freq <= 1 << self.precision):
            raise ValueError(f"interval [{cum}, {cum + freq}) does not contain target {t}")
        dec_advance(self._st, self._data, int(cum), int(freq), self.precision)

    @property
    def overrun(self) -> int:
        return int(dec_overrun(self._st))

    @property
    def position(self) -> int:
        return int(dec_position(self._st))

    def at_end(self) -> bool:
        """True when every byte was consumed and none was missing: a valid stream's end."""
        return self.overrun == 0 and self.position == self._data.shape[0]
