"""Mixer: round trips, decoder/encoder agreement, determinism, params, memory, cost accuracy."""

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmzip.errors import FormatError, VersionError
from lmzip.mixer import (
    MixDecoder,
    MixEncoder,
    MixerParams,
    _new_state,
    mix_cost_bits,
    mix_decode,
    mix_decode_token,
    mix_encode,
)

# Small tables keep each example fast; the coding path is the same as with the defaults.
SMALL = MixerParams(hash_bits=10, match_bits=8, apm2_bits=6, match_min=2)
Q30 = 1 << 30


def lm_vectors(rng, n, V, kind):
    """Q30 LM vectors: the argmax is exactly 2^30; zeros, one-hot and random rows mixed."""
    p = rng.integers(0, Q30, (n, V), dtype=np.int64)
    p[np.arange(n), rng.integers(0, V, n)] = Q30
    if kind == "zeros":
        p[rng.random((n, V)) < 0.8] = 0
    elif kind == "onehot":
        p[:] = 0
        p[np.arange(n), rng.integers(0, V, n)] = Q30
    elif kind == "mixed":
        rows = rng.random(n)
        p[rows < 0.3] = 0
        p[rows < 0.3, 0] = Q30
        p[(rows > 0.9)] //= 1 << 20  # tiny values, many of them 0
    return p


def correlated_tokens(rng, n, V):
    """A token stream with repeats, so context and match models get used."""
    base = rng.integers(0, V, max(1, n // 4), dtype=np.int32)
    return np.resize(base, n) if n else np.zeros(0, np.int32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    V=st.integers(1, 300),
    n=st.integers(0, 60),
    kind=st.sampled_from(["random", "zeros", "onehot", "mixed"]),
    repeat=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(V, n, kind, repeat, seed):
    rng = np.random.default_rng(seed)
    p = lm_vectors(rng, n, V, kind)
    toks = correlated_tokens(rng, n, V) if repeat else rng.integers(0, V, n, dtype=np.int32)
    payload = mix_encode(p, toks, SMALL)
    assert np.array_equal(mix_decode(payload, p, SMALL), toks)


def test_decoder_one_token_at_a_time_matches_encoder_blocks():
    rng = np.random.default_rng(1)
    V, n = 1000, 700  # V not a power of two: forced bits in the last subtree
    p = lm_vectors(rng, n, V, "random")
    toks = correlated_tokens(rng, n, V)
    enc = MixEncoder(SMALL, V, n)
    for i0 in range(0, n, 97):  # feeding in blocks codes the same bytes as one block
        enc.feed(p[i0 : i0 + 97], toks[i0 : i0 + 97])
    payload = enc.finish()
    assert payload == mix_encode(p, toks, SMALL)
    dec = MixDecoder(payload, SMALL, V, n)
    arrays = dec.arrays
    out = [mix_decode_token(*arrays, p[i]) for i in range(n)]
    assert out == toks.tolist()
    assert dec.overrun() == 0


def test_determinism_and_interleaved_decoders():
    rng = np.random.default_rng(2)
    V, n = 257, 300
    chunks = [(lm_vectors(rng, n, V, "mixed"), correlated_tokens(rng, n, V)) for _ in range(3)]
    payloads = [mix_encode(p, t, SMALL) for p, t in chunks]
    assert payloads == [mix_encode(p, t, SMALL) for p, t in chunks]
    # A batch of decoders stepped round-robin, as a batched LM decode loop would.
    decs = [MixDecoder(b, SMALL, V, n) for b in payloads]
    got = [[dec.next(p[i]) for dec, (p, _) in zip(decs, chunks)] for i in range(n)]
    assert np.array_equal(np.array(got).T, np.array([t for _, t in chunks]))


def test_golden_payload():
    """Pins the bitstream of mixer version 1 (format_spec/mixer.md, section 8)."""
    rng = np.random.default_rng(12345)
    V, n = 1024, 400
    p = lm_vectors(rng, n, V, "random")
    toks = correlated_tokens(rng, n, V)
    payload = mix_encode(p, toks, MixerParams())
    assert len(payload) == GOLDEN_LEN
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_SHA256


GOLDEN_LEN = 171
GOLDEN_SHA256 = "16bdd2681b2a439992a529ca5945f00664c0fab3c5478fae04afab4aa11f4215"


def test_extreme_vocab_sizes():
    for V in (1, 2, 65536):
        rng = np.random.default_rng(V)
        p = lm_vectors(rng, 5, V, "random")
        toks = rng.integers(0, V, 5, dtype=np.int32)
        payload = mix_encode(p, toks, SMALL)
        assert np.array_equal(mix_decode(payload, p, SMALL), toks)


def test_cost_bits_match_payload():
    rng = np.random.default_rng(3)
    V, n = 1024, 3000
    p = lm_vectors(rng, n, V, "random")
    toks = correlated_tokens(rng, n, V)
    bits = mix_cost_bits(p, toks, MixerParams(hash_bits=14))
    payload = mix_encode(p, toks, MixerParams(hash_bits=14))
    assert bits.shape == (n,) and (bits > 0).all()
    assert abs(bits.sum() / 8 - len(payload)) < 8
    assert bits[n // 2 :].mean() < 0.5 * bits[: n // 8].mean()  # it learned the repeats


def test_corrupt_payload_decodes_in_range():
    rng = np.random.default_rng(4)
    V, n = 300, 50
    p = lm_vectors(rng, n, V, "random")
    out = mix_decode(rng.bytes(7), p, SMALL)
    assert ((0 <= out) & (out < V)).all()


def test_params_round_trip_and_rejects():
    prm = MixerParams(orders=(1, 3, 7), hash_bits=12, limit=100, match_min=6, lr=3)
    b = prm.to_bytes()
    assert len(b) <= 64 and b[0] == 1
    assert MixerParams.from_bytes(b) == prm
    assert MixerParams.from_bytes(MixerParams().to_bytes()) == MixerParams()
    with pytest.raises(VersionError):
        MixerParams.from_bytes(bytes([2]) + b[1:])
    with pytest.raises(FormatError):
        MixerParams.from_bytes(b[:-1])
    with pytest.raises(FormatError):
        MixerParams.from_bytes(b[:10] + bytes([0]) + b[11:])  # hash_bits 0
    with pytest.raises(ValueError):
        MixerParams(orders=(1, 2, 3, 4, 5, 6, 7, 8, 9))


def test_memory_bound():
    for hb in (10, 16):
        prm = MixerParams(hash_bits=hb, match_bits=12, apm2_bits=8)
        _head, body, hist = _new_state(prm, 1024, 5000)
        assert body.nbytes + hist.nbytes == prm.memory_bytes(5000)
        # buckets + match table + APM2 + history + fixed tables (stretch 256 KiB, APM1 784 KiB)
        bound = (64 << hb) + (4 << 12) + (196 << 8) + 4 * 5000 + 1_100_000
        assert prm.memory_bytes(5000) <= bound
    with pytest.raises(ValueError):
        MixEncoder(SMALL, 10, 3).feed(np.ones((4, 10), np.int64), np.zeros(4, np.int32))


def test_input_validation():
    with pytest.raises(ValueError):
        mix_encode(np.full((2, 4), Q30 + 1), np.zeros(2, np.int32), SMALL)
    with pytest.raises(ValueError):
        mix_encode(np.full((2, 4), Q30), np.array([0, 4], np.int32), SMALL)
