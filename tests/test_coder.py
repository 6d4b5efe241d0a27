"""Range coder: round trips, bit-exactness against references, the spec example, corrupt input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from lmzip import coder

MASK48 = (1 << 48) - 1
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_bigint(cums, freqs, precisions) -> bytes:
    """The coder as exact arithmetic: no cache, no carry logic; the stream is the final low.

    low + range never exceeds its initial 2^48 - 1 (scaled), so the leading byte is 0 and the
    stream is low written in shifts + 6 bytes. Agreement proves the carry handling.
    """
    low, rng, shifts = 0, MASK48, 0
    for cum, freq, p in zip(cums, freqs, precisions):
        r = rng >> int(p)
        low += r * int(cum)
        rng = r * int(freq)
        while rng < 1 << 40:
            rng <<= 8
            low <<= 8
            shifts += 1
    assert low < 1 << (48 + 8 * shifts)
    return low.to_bytes(shifts + 6, "big")


def make_table(precision: int, weights, zeros=()) -> np.ndarray:
    """freq[V] with every listed symbol >= 1 and total exactly 2^P; indices in zeros get 0."""
    v = len(weights)
    w = np.asarray(weights, dtype=np.float64) + 1e-9
    extra = (1 << precision) - v
    freq = 1 + np.floor(w / w.sum() * extra).astype(np.int64)
    freq[int(np.argmax(freq))] += (1 << precision) - freq.sum()
    for z in zeros:  # a zero-frequency symbol is an empty interval inserted into the table
        freq = np.insert(freq, min(z, len(freq)), 0)
    return freq


def cumtable(freq: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(freq)]).astype(np.int64)


@st.composite
def streams(draw, precisions=(1, 2, 8, 12, 16, 23, 24)):
    p = draw(st.sampled_from(precisions))
    v = draw(st.integers(1, min(1 << p, 40)))
    weights = draw(st.lists(st.floats(0, 1), min_size=v, max_size=v))
    zeros = draw(st.lists(st.integers(0, v), max_size=3))
    freq = make_table(p, weights, zeros)
    nonzero = np.flatnonzero(freq)
    picks = draw(st.lists(st.integers(0, len(nonzero) - 1), max_size=300))
    syms = nonzero[np.asarray(picks, dtype=np.int64)]
    return p, freq, syms


def assert_size_bounds(size, freqs, precisions):
    # Spec section 7: ideal/8 + 5 <= size <= ideal/8 + sum(e(P))/8 + 6, e = -log2(1 - 2^(P-40)).
    freqs, precisions = np.asarray(freqs, np.float64), np.asarray(precisions, np.float64)
    ideal = float(np.sum(precisions - np.log2(freqs))) / 8
    slack = float(np.sum(-np.log2(1 - 2.0 ** (precisions - 40)))) / 8
    assert ideal + 5 - 1e-6 <= size <= ideal + slack + 6 + 1e-6


def roundtrip_all_apis(p, freq, syms):
    """Encode with both encoder APIs, decode with all three decoder APIs; return the stream."""
    cum = cumtable(freq)
    data = coder.encode_symbols(cum[syms], freq[syms], p).tobytes()
    enc = coder.Encoder(p)
    for s in syms[: len(syms) // 2]:
        enc.encode(int(cum[s]), int(freq[s]))
    enc.encode_array(cum[syms[len(syms) // 2 :]], freq[syms[len(syms) // 2 :]])
    assert enc.finish() == data
    assert len(data) <= coder.max_encoded_size(len(syms), p)
    assert_size_bounds(len(data), freq[syms], [p] * len(syms))

    out, overrun = coder.decode_symbols(data, cum, len(syms), p)
    assert overrun == 0 and np.array_equal(out, syms)
    out_rows, _ = coder.decode_symbols(data, np.tile(cum, (len(syms), 1)), len(syms), p)
    assert np.array_equal(out_rows, syms)

    by_table, by_target = coder.Decoder(data, p), coder.Decoder(data, p)
    for s in syms:
        assert by_table.decode(cum) == s
        t = by_target.target()
        assert 0 <= t < 1 << p and cum[s] <= t < cum[s + 1]
        by_target.advance(int(cum[s]), int(freq[s]))
    # A valid stream is consumed exactly: every byte read, none missing.
    assert by_table.at_end() and by_target.at_end()
    return data


@FAST
@given(streams())
def test_roundtrip_random_tables(stream):
    p, freq, syms = stream
    data = roundtrip_all_apis(p, freq, syms)
    assert data == ref_bigint(cumtable(freq)[syms], freq[syms], [p] * len(syms))


def test_empty_and_single_symbol_streams():
    for p in (1, 16, 24):
        freq = np.array([1 << p])
        empty = roundtrip_all_apis(p, freq, np.zeros(0, dtype=np.int64))
        assert empty == bytes(6)  # nothing coded: the flushed low is 0
        # A certain symbol costs no bits: any count of it stays at the flush size.
        assert len(roundtrip_all_apis(p, freq, np.zeros(1000, dtype=np.int64))) == 6
        roundtrip_all_apis(p, make_table(p, [1.0, 1.0]), np.array([1]))


@pytest.mark.parametrize("p", [1, 2, 12, 16, 24])
def test_extreme_skew(p):
    freq = np.array([1, (1 << p) - 1]) if p > 1 else np.array([1, 1])
    rng = np.random.default_rng(p)
    for syms in (np.zeros(400), np.ones(400), rng.random(400) < 0.01, rng.random(400) < 0.99):
        data = roundtrip_all_apis(p, freq, syms.astype(np.int64))
        cum = cumtable(freq)
        assert data == ref_bigint(cum[syms.astype(int)], freq[syms.astype(int)], [p] * 400)
    # All rare symbols cost P bits each: the stream reaches its worst-case bound closely.
    rare = coder.encode_symbols(np.zeros(3000, np.int64), np.ones(3000, np.int64), p)
    assert 3000 * p / 8 <= len(rare) <= coder.max_encoded_size(3000, p)


@FAST
@given(st.lists(st.tuples(st.integers(1, 24), st.floats(0, 1)), max_size=200))
def test_mixed_precision_stream(items):
    # P may change from symbol to symbol; the decoder must use the same sequence.
    cums = [int(x * ((1 << p) - 1)) for p, x in items]
    freqs = [1 + int((1 - x) * ((1 << p) - 1 - c)) * (x < 0.5) for (p, x), c in zip(items, cums)]
    ps = [p for p, _ in items]
    st_ = coder.enc_new()
    out = np.zeros(coder.max_encoded_size(len(items), 24), dtype=np.uint8)
    pos = 0
    for c, f, p in zip(cums, freqs, ps):
        pos = coder.enc_put(st_, out, pos, c, f, p)
    data = out[: coder.enc_finish(st_, out, pos)]
    assert data.tobytes() == ref_bigint(cums, freqs, ps)
    assert_size_bounds(len(data), freqs, ps)
    dst = coder.dec_new(data)
    for c, f, p in zip(cums, freqs, ps):
        assert c <= coder.dec_target(dst, p) < c + f
        coder.dec_advance(dst, data, c, f, p)
    assert coder.dec_overrun(dst) == 0 and coder.dec_position(dst) == len(data)


def symbols_from_bytes(pattern: bytes, p: int, freq: np.ndarray) -> np.ndarray:
    """Decode symbols out of chosen bytes: re-encoding them gives a stream near those bytes."""
    data = np.frombuffer(pattern, dtype=np.uint8)
    cum = cumtable(freq)
    dst = coder.dec_new(data)
    syms = []
    while coder.dec_position(dst) < len(data):
        syms.append(coder.dec_symbol(dst, data, cum, p))
    return np.array(syms, dtype=np.int64)


@pytest.mark.parametrize("run_byte", [0x00, 0xFF])
@pytest.mark.parametrize("p", [8, 16])
def test_carry_propagation_long_runs(run_byte, p):
    # Symbols whose interval straddles a byte boundary for 400 bytes: the encoder defers a run
    # of 0xFF bytes; with run_byte 0x00 a carry then turns the whole run into 0x00.
    rng = np.random.default_rng(run_byte + p)
    freq = make_table(p, rng.random(7))
    pattern = rng.bytes(20) + bytes([run_byte]) * 400 + bytes([0x5A]) + rng.bytes(20)
    syms = symbols_from_bytes(pattern, p, freq)
    cum = cumtable(freq)
    enc = coder.enc_new()
    out = np.zeros(coder.max_encoded_size(len(syms), p), dtype=np.uint8)
    pos, longest = 0, 0
    for s in syms:
        pos = coder.enc_put(enc, out, pos, cum[s], freq[s], p)
        longest = max(longest, int(enc[3]))  # cache_size: the deferred run, plus the cache
    data = out[: coder.enc_finish(enc, out, pos)].tobytes()
    # A deferred run is written as 0xFF bytes without a carry, as 0x00 bytes with one.
    assert longest >= 390 and bytes([run_byte]) * 390 in data
    assert data == ref_bigint(cum[syms], freq[syms], [p] * len(syms))
    roundtrip_all_apis(p, freq, syms)


def test_spec_worked_example():
    # format_spec/coder.md, "Worked example": a carry, the skipped first byte, a deferred run.
    freq = np.array([8, 4, 3, 1])
    syms = np.array([3, 3, 1, 3, 3, 0, 2])
    data = roundtrip_all_apis(4, freq, syms)
    assert data.hex(" ") == "ff bf d7 ff ff e1 34 a0"


def test_truncated_stream_reports_overrun():
    rng = np.random.default_rng(1)
    freq = make_table(12, rng.random(50))
    syms = rng.integers(0, 50, 2000)
    data = roundtrip_all_apis(12, freq, syms)
    for cut in (1, 2, 6, 100, len(data)):
        out, overrun = coder.decode_symbols(data[:-cut], cumtable(freq), len(syms), 12)
        # Missing bytes read as zeros. If the symbols still come out right, the decoder took the
        # same path and read exactly len(data) bytes, so it missed exactly `cut` of them; if
        # not, the path (and the count) changed, and the checksum above the coder catches it.
        assert overrun == cut if np.array_equal(out, syms) else overrun > 0
    trailing = coder.Decoder(data + b"\0", 12)
    trailing.decode_array(cumtable(freq), len(syms))
    assert trailing.overrun == 0 and not trailing.at_end()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([1, 5, 16, 24]), st.integers(0, 1000))
def test_corrupt_input_never_crashes(data, p, seed):
    rng = np.random.default_rng(seed)
    v = int(rng.integers(1, min(1 << p, 300) + 1))
    cum = cumtable(make_table(p, rng.random(v), zeros=[int(rng.integers(0, v))]))
    n = 200
    syms, overrun = coder.decode_symbols(data, cum, n, p)
    assert syms.min() >= 0 and syms.max() < len(cum) - 1
    assert np.all(cum[syms + 1] > cum[syms])  # zero-frequency symbols never come out
    assert overrun >= max(0, 6 - len(data))
    dst = coder.dec_new(np.frombuffer(data, dtype=np.uint8))
    for _ in range(n):
        t = coder.dec_target(dst, p)
        assert 0 <= t < 1 << p
        coder.dec_advance(dst, np.frombuffer(data, dtype=np.uint8), t, 1, p)
    assert dst[0] <= MASK48 and 1 << 40 <= dst[1] <= MASK48


def test_target_is_clamped():
    # code >= range happens only when the first six bytes are all 0xFF (a valid stream's first
    # window is below 2^48 - 1); target would be 2^P there, one past the table.
    for p in (1, 8, 24):
        data = np.frombuffer(b"\xff" * 6 + b"\x12\x34", dtype=np.uint8)
        dst = coder.dec_new(data)
        assert coder.dec_target(dst, p) == (1 << p) - 1
        syms, _ = coder.decode_symbols(data, [0, 1 << (p - 1), 1 << p], 50, p)
        assert syms[0] == 1 and set(syms) <= {0, 1}


def test_small_buffer_is_never_overrun():
    st_ = coder.enc_new()
    backing = np.zeros(200, dtype=np.uint8)
    out = backing[:4]  # an out-of-bounds write would land in backing[4:]
    pos = 0
    for _ in range(100):
        pos = coder.enc_put(st_, out, pos, (1 << 16) - 1, 1, 16)  # nonzero (0xFF) output bytes
    pos = coder.enc_finish(st_, out, pos)
    assert pos > len(out) and out.all() and not backing[4:].any()
    # The same symbols with a buffer of the documented bound produce exactly pos bytes.
    ones = np.ones(100, np.int64)
    ref = coder.encode_symbols(ones * ((1 << 16) - 1), ones, 16)
    assert len(ref) == pos <= coder.max_encoded_size(100, 16)


def test_overhead_one_million_symbols():
    # Zipf-like tables as a language model produces them; four alternating tables.
    rng = np.random.default_rng(0)
    p, v, n = 16, 1024, 1_000_000
    freqs = [make_table(p, 1 / np.arange(1, v + 1) ** a) for a in (0.8, 1.0, 1.2, 1.6)]
    cums = np.stack([cumtable(f) for f in freqs])
    which = np.arange(n) % 4
    syms = np.empty(n, dtype=np.int64)
    for k, f in enumerate(freqs):
        syms[which == k] = rng.choice(v, size=int((which == k).sum()), p=f / (1 << p))
    cum = cums[which, syms]
    freq = cums[which, syms + 1] - cum
    data = coder.encode_symbols(cum, freq, p)
    ideal = coder.ideal_bits(freq, p) / 8
    assert abs(len(data) - ideal) <= 1e-4 * ideal + 8
    out, overrun = _decode_rotating(data, cums, n, p)
    assert overrun == 0 and np.array_equal(out, syms)


@njit
def _decode_rotating(data, cums, n, p):
    # Table i % 4 for symbol i, without materializing n tables (n x 1025 int64 is 8 GB).
    dst = coder.dec_new(data)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = coder.dec_symbol(dst, data, cums[i % cums.shape[0]], p)
    return out, coder.dec_overrun(dst)


def test_wrappers_validate():
    with pytest.raises(ValueError):
        coder.Encoder(0)
    with pytest.raises(ValueError):
        coder.Encoder(25)
    enc = coder.Encoder(4)
    for cum, freq in ((0, 0), (-1, 2), (15, 2), (0, 17)):
        with pytest.raises(ValueError):
            enc.encode(cum, freq)
    with pytest.raises(ValueError):
        enc.encode_array([0, 3], [1, 14])
    enc.encode(3, 2)
    data = enc.finish()
    with pytest.raises(ValueError):
        enc.finish()
    dec = coder.Decoder(data, 4)
    for bad in ([0, 15], [1, 16], [0, 9, 8, 16], [16]):
        with pytest.raises(ValueError):
            dec.decode(bad)
    with pytest.raises(ValueError):
        dec.advance(0, 3)  # does not contain the target (3)
    dec.advance(3, 2)
    assert dec.at_end()


@njit
def _caller_roundtrip(cum, freq, syms, p):
    # Other numba code (a mixer, a decode loop) calls the core inside its own njit loop.
    st_ = coder.enc_new()
    out = np.empty(syms.shape[0] * 3 + 6, dtype=np.uint8)
    pos = 0
    for s in syms:
        pos = coder.enc_put(st_, out, pos, cum[s], freq[s], p)
    data = out[: coder.enc_finish(st_, out, pos)]
    dst = coder.dec_new(data)
    back = np.empty_like(syms)
    for i in range(syms.shape[0]):
        back[i] = coder.dec_symbol(dst, data, cum, p)
    return back, coder.dec_overrun(dst)


def test_callable_from_njit():
    freq = make_table(10, [5.0, 1.0, 0.1, 3.0])
    syms = np.random.default_rng(2).integers(0, 4, 500)
    back, overrun = _caller_roundtrip(cumtable(freq), freq, syms, 10)
    assert overrun == 0 and np.array_equal(back, syms)
