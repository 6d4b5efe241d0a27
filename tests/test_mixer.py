"""Mixer: round trips, decoder/encoder agreement, determinism, params, memory, cost accuracy."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmzip.errors import FormatError, VersionError
from lmzip.mixer import (
    GroupEncoder,
    MixDecoder,
    MixEncoder,
    MixerParams,
    _new_state,
    mix_cost_bits,
    mix_decode,
    mix_decode_token,
    mix_encode,
    new_table,
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
    with ThreadPoolExecutor(3) as pool:  # the coding loops release the GIL
        assert list(pool.map(lambda c: mix_encode(*c, SMALL), chunks)) == payloads
    # A batch of decoders stepped round-robin, as a batched LM decode loop would.
    decs = [MixDecoder(b, SMALL, V, n) for b in payloads]
    got = [[dec.next(p[i]) for dec, (p, _) in zip(decs, chunks)] for i in range(n)]
    assert np.array_equal(np.array(got).T, np.array([t for _, t in chunks]))


def test_golden_payload():
    """Pins the bitstream of mixer version 3 (format_spec/mixer.md, section 8)."""
    rng = np.random.default_rng(12345)
    V, n = 1024, 400
    p = lm_vectors(rng, n, V, "random")
    toks = correlated_tokens(rng, n, V)
    payload = mix_encode(p, toks, MixerParams())
    assert len(payload) == GOLDEN_LEN
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_SHA256


GOLDEN_LEN = 151
GOLDEN_SHA256 = "5cdb88ed8bb0fcde9eaf401b8932c035e6105c0ca5c2707a2c1e75b5d477b61b"


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
    prm = MixerParams(orders=(1, 3, 7), hash_bits=12, limit=9, match_min=6, lr=3)
    b = prm.to_bytes()
    assert len(b) == 19 and b[0] == 4 and b[-1] == 1  # version 4: group last
    assert MixerParams.from_bytes(b) == prm
    assert MixerParams.from_bytes(MixerParams().to_bytes()) == MixerParams()
    assert MixerParams.from_bytes(MixerParams(group=16).to_bytes()).group == 16
    for v in (0, 1, 2, 5, 255):  # older streams (and unknown versions) are refused, not decoded
        with pytest.raises(VersionError, match="mixer version"):
            MixerParams.from_bytes(bytes([v]) + b[1:])
    # version 3 params (18 bytes, no group byte) are read as group 1: the same coding
    v3_default = bytes([3]) + MixerParams().to_bytes()[1:-1]
    assert len(v3_default) == 18 and MixerParams.from_bytes(v3_default) == MixerParams()
    with pytest.raises(FormatError, match="expected 18"):
        MixerParams.from_bytes(v3_default + b"\x01")
    for bad in (0, 17):
        with pytest.raises(FormatError, match="group"):
            MixerParams.from_bytes(b[:-1] + bytes([bad]))
    v1_default = bytes.fromhex("0105010203040600000014ff00041208050e")  # version 1 default params
    with pytest.raises(VersionError, match="mixer version 1"):
        MixerParams.from_bytes(v1_default)
    v2_default = bytes.fromhex("02080001020304062229143c0003120e050e")  # version 2 default params
    with pytest.raises(VersionError, match="mixer version 2"):
        MixerParams.from_bytes(v2_default)
    with pytest.raises(FormatError):
        MixerParams.from_bytes(b[:-1])
    with pytest.raises(FormatError):
        MixerParams.from_bytes(b[:10] + bytes([0]) + b[11:])  # hash_bits 0
    with pytest.raises(ValueError):
        MixerParams(orders=(1, 2, 3, 4, 5, 6, 7, 8, 9))
    for bad in (17, 32, 36, 39, 43):
        with pytest.raises(ValueError):
            MixerParams(orders=(1, bad))
    prm = MixerParams(orders=(0, 33, 35, 40, 42))
    assert MixerParams.from_bytes(prm.to_bytes()).orders == (0, 33, 35, 40, 42)


def test_memory_bound():
    for hb in (10, 16):
        prm = MixerParams(hash_bits=hb, match_bits=12, apm2_bits=8)
        _head, body, mem, hist = _new_state(prm, 1024, 5000)
        assert body.nbytes + mem.nbytes + hist.nbytes == prm.memory_bytes(5000)
        # buckets + match table + APM2 + history + fixed tables (stretch 256 KiB, APM1 784 KiB,
        # weights 112 KiB, SSE 2 x 3.1 MiB, indirect 768 KiB)
        bound = (32 << hb) + (4 << 12) + (196 << 8) + 4 * 5000 + 1_300_000 + 7_300_000
        assert prm.memory_bytes(5000) <= bound
    with pytest.raises(ValueError):
        MixEncoder(SMALL, 10, 3).feed(np.ones((4, 10), np.int64), np.zeros(4, np.int32))


def test_input_validation():
    with pytest.raises(ValueError):
        mix_encode(np.full((2, 4), Q30 + 1), np.zeros(2, np.int32), SMALL)
    with pytest.raises(ValueError):
        mix_encode(np.full((2, 4), Q30), np.array([0, 4], np.int32), SMALL)


def _reference_cost(p_all, toks, prm):
    """format_spec/mixer.md written out in plain Python, independently of the numba code."""
    from lmzip.ctxmodels import SQUASH_KNOTS as K

    M1, M2, MASK, XMAX = 0x6A09E667, 0x3C6EF373, 0xFFFFFFFF, 3071

    def squash(x):
        z = min(max(x, -XMAX), XMAX) + 3072
        k, f = z >> 7, z & 127
        return (K[k] * (128 - f) + K[k + 1] * f + 64) >> 7

    st = [XMAX] * 65536
    j = 0
    for x in range(-XMAX, XMAX + 1):
        while j <= squash(x) and j < 65536:
            st[j] = x
            j += 1
    rate = [131072 // (2 * n + 3) for n in range(16)]

    def hstep(h, x):
        return ((h + x + 1) * M1) & MASK

    def hfin(h):
        h ^= h >> 15
        h = (h * M2) & MASK
        return h ^ (h >> 13)

    V = p_all.shape[1]
    B = max(1, (V - 1).bit_length())
    nm = len(prm.orders)
    init = 2048 << 4
    nb = 1 << prm.hash_bits
    tags, ents = [0] * nb, [[init] * 16 for _ in range(nb)]
    W = [[65536] + [(65536 * 80 // 64) // max(1, nm)] * nm + [32768, 0, 0, 0] for _ in range(2205)]
    W2 = [[16384] * 4 for _ in range(64)]
    SSE = [{}, {}]  # context -> 49 points, created on first use at their initial value
    IT = [[0] * 65536 for _ in range(3)]
    A = [
        [[k << 6 for k in K] for _ in range(4096)],
        [[k << 6 for k in K] for _ in range(1 << prm.apm2_bits)],
    ]
    MT, SM = [0] * (1 << prm.match_bits), [3 * (1 << 22) // 4] * 64
    mptr = mlen = 0
    t = []
    costs = []

    def find(h):
        tag = ((((h * M1) & MASK) >> 16) % 65535) + 1
        cands = [(h & (nb - 1)) ^ w for w in range(4)]
        for i in cands:
            if tags[i] == tag:
                return i
        i = min(cands, key=lambda b: ents[b][1] & 15)  # the earliest of the least counted
        tags[i] = tag
        ents[i] = [init] * 16
        return i

    for n, s in enumerate(toks.tolist()):
        p = p_all[n].tolist()
        S = [0]
        for v in p:
            S.append(S[-1] + v)
        tokf = lambda j: t[j] if j >= 0 else 65536

        def ctxq(q):
            g = 0
            for j in range(1, q + 1):
                g = hstep(g, tokf(n - j))
            return g

        ctx = []
        for k in prm.orders:
            h = (k * M2) & MASK
            if k <= 16:
                for j in range(1, k + 1):
                    h = hstep(h, tokf(n - j))
            elif k <= 35:
                F = IT[k - 33][hfin(ctxq(k - 32)) & 65535]
                h = hstep(hstep(h, F), tokf(n - 1))
            else:
                h = hstep(h, p.index(max(p)))
                for j in range(1, k - 40 + 1):
                    h = hstep(h, tokf(n - j))
            ctx.append(h)
        E = t[mptr] if mlen > 0 else None
        node, bits, base = 1, 0.0, [0] * nm
        for d in range(B):
            pre, sh = node - (1 << d), B - d
            lo = pre << sh
            mid = lo + (1 << (sh - 1))
            if mid >= V:
                node *= 2
                continue
            y = (s >> (sh - 1)) & 1
            hi = min(lo + (1 << sh), V)
            m0, m1 = S[mid] - S[lo], S[hi] - S[mid]
            qlm = 32768 if m0 + m1 == 0 else min(max((m1 << 16) // (m0 + m1), 1), 65535)
            x = [st[qlm]]
            g = d & 3
            if g == 0:
                base = [find(hfin(hstep(hstep(ctx[m], m), node))) for m in range(nm)]
            jn = (1 << g) | (pre & ((1 << g) - 1))
            known = 0
            for m in range(nm):
                e = ents[base[m]][jn]
                x.append(st[(e >> 4) << 4])
                if e & 15:
                    known = m + 1
            ms, si = 0, -1
            if E is not None and (E >> sh) == pre:
                eb = (E >> (sh - 1)) & 1
                lb = mlen if mlen < 16 else min(16 + ((mlen - 16) >> 2), 31)
                si = 2 * lb + (1 if d > 0 else 0)
                v = st[SM[si] >> 6]
                x.append(v if eb else -v)
                ms = 1 if lb < 12 else 2
            else:
                x.append(0)
            x.append(256)
            z0 = x[0] + 3072
            k0, f0 = z0 >> 7, z0 & 127
            es = [
                hfin(hstep(hstep(0x51ED27, tokf(n - 1)), node)) & 16383,
                hfin(hstep(hstep(hstep(0x2B992D, tokf(n - 2)), tokf(n - 1)), node)) & 16383,
            ]
            for i in (0, 1):
                tab = SSE[i].setdefault(es[i], [k << 6 for k in K])
                qsi = (tab[k0] * (128 - f0) + tab[k0 + 1] * f0) >> 13
                x.append(st[min(max(qsi, 1), 65535)])
            a = abs(x[0])
            conf = 0 if a < 256 else (1 if a < 1024 else (2 if a < 2048 else 3))
            ws = [(conf * 3 + ms) * 9 + known, 108 + 3 * d + ms, 156 + (node & 1023),
                  1180 + min(tokf(n - 1), 1024)]  # fmt: skip
            dots = [
                min(max(sum(wi * xi for wi, xi in zip(W[w], x)) >> 16, -XMAX), XMAX) for w in ws
            ]
            qs = [squash(v) for v in dots]
            u = 4 * d + conf
            dot = min(max(sum(wi * di for wi, di in zip(W2[u], dots)) >> 16, -XMAX), XMAX)
            qm = squash(dot)
            z = dot + 3072
            k, f = z >> 7, z & 127
            cs = [
                node & 4095,
                hfin(hstep(hstep(0, tokf(n - 1)), node)) & ((1 << prm.apm2_bits) - 1),
            ]
            qa = [(A[i][cs[i]][k] * (128 - f) + A[i][cs[i]][k + 1] * f) >> 13 for i in (0, 1)]
            q = min(max((qm + qa[0] + 2 * qa[1] + 2) >> 2, 1), 65535)
            bits -= np.log2((q if y else 65536 - q) / 65536)
            for w, qi in zip(ws, qs):
                err = ((y << 16) - qi) * prm.lr
                W[w] = [
                    min(max(wi + ((xi * err + (1 << 17)) >> 18), -(1 << 22)), 1 << 22)
                    for wi, xi in zip(W[w], x)
                ]
            err = (y << 16) - qm
            W2[u] = [
                min(max(wi + ((di * err + (1 << 17)) >> 18), -(1 << 22)), 1 << 22)
                for wi, di in zip(W2[u], dots)
            ]
            for m in range(nm):
                e = ents[base[m]][jn]
                pp, c = e >> 4, e & 15
                pp = min(max(pp + ((((y << 12) - pp) * rate[c] + 32768) >> 16), 1), 4095)
                ents[base[m]][jn] = (pp << 4) | (c + 1 if c < prm.limit else c)
            if si >= 0:
                SM[si] += (((1 if y == eb else 0) << 22) - SM[si]) >> 6
            for i in (0, 1):
                pt = k + (f >> 6)
                A[i][cs[i]][pt] += ((y << 22) - A[i][cs[i]][pt]) >> prm.apm_rate
                pt = k0 + (f0 >> 6)
                SSE[i][es[i]][pt] += ((y << 22) - SSE[i][es[i]][pt]) >> 6
            node = 2 * node + y
        costs.append(bits)
        t.append(s)
        n1 = n + 1
        g = 0
        for q in range(1, 4):
            g = hstep(g, t[n1 - 1 - q] if n1 - 1 - q >= 0 else 65536)
            i = hfin(g) & 65535
            IT[q - 1][i] = ((IT[q - 1][i] << 10) | s) & ((1 << 20) - 1)
        if mlen > 0 and t[mptr] == s:
            mlen, mptr = min(mlen + 1, 65535), mptr + 1
        else:
            mlen = 0
        if n1 >= prm.match_min:
            h = 0
            for j in range(1, prm.match_min + 1):
                h = hstep(h, t[n1 - j])
            i = hfin(h) & ((1 << prm.match_bits) - 1)
            if mlen == 0 and MT[i] > 0:
                c, L = MT[i], 0
                while L < 32 and c - 1 - L >= 0 and t[c - 1 - L] == t[n1 - 1 - L]:
                    L += 1
                if L > 0:
                    mlen, mptr = L, c
            MT[i] = n1
    return np.array(costs)


def test_spec_reference_implementation_agrees():
    rng = np.random.default_rng(7)
    prm = MixerParams(orders=(0, 1, 2, 4, 33, 35, 40, 42), hash_bits=10, match_bits=8,
                      apm2_bits=6, match_min=2)  # fmt: skip
    for V, n in ((37, 120), (256, 60), (1100, 40)):
        p = lm_vectors(rng, n, V, "mixed")
        toks = correlated_tokens(rng, n, V)
        np.testing.assert_allclose(
            _reference_cost(p, toks, prm), mix_cost_bits(p, toks, prm), rtol=0, atol=1e-9
        )


@pytest.mark.parametrize("old", [1, 2])
def test_older_mixer_stream_is_refused_with_a_version_error(tiny_model_path, monkeypatch, old):
    """A file written by an older mixer (params byte 0 = 1 or 2) must not decode to garbage."""
    import io

    from lmzip import api, mixer

    lm = api.load_model(tiny_model_path)
    raw = b"The mixer version is checked before any payload is decoded. " * 20
    monkeypatch.setattr(mixer, "MIXER_VERSION", old)  # a writer of an older mixer version
    monkeypatch.setattr(mixer, "READ_VERSIONS", (old,))
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(raw), buf, lm, api.CodingOptions(threads=1))
    monkeypatch.undo()  # this build's mixer version again
    out = []
    with pytest.raises(VersionError, match=f"mixer version {old} is not supported"):
        api.decompress_stream(io.BytesIO(buf.getvalue()), out.append, lm,
                              api.CodingOptions(threads=1))  # fmt: skip
    assert out == []


def test_group_shares_one_table_in_lock_step():
    """A group's chunks code with one bucket table in lock-step (spec 4.2): alone, a group of
    one writes MixEncoder's bytes; a group of three decodes with MixDecoders sharing a table
    in the same order, and only in that order; sharing helps when the chunks are alike."""
    rng = np.random.default_rng(7)
    V = 256
    base = rng.integers(0, 40, 300)
    toks = [np.tile(base, 3)[off : off + n].astype(np.int32) for off, n in ((0, 600), (5, 420),
                                                                            (9, 7))]  # fmt: skip
    ps = [lm_vectors(rng, len(t), V, "random") for t in toks]
    alone = GroupEncoder(SMALL, V, [600])
    alone.feed([ps[0]], [toks[0]])
    assert alone.finish() == [mix_encode(ps[0], toks[0], SMALL)]
    enc = GroupEncoder(SMALL, V, [len(t) for t in toks])
    for s in range(0, 600, 256):  # blocks of the same positions; a chunk's block ends with it
        enc.feed([p[s : s + 256] for p in ps], [t[s : s + 256] for t in toks])
    payloads = enc.finish()
    own = [mix_encode(p, t, SMALL) for p, t in zip(ps, toks)]
    assert len(payloads[1]) < len(own[1])  # chunk 1 repeats chunk 0's text at the same time

    def decode(order):
        mem = new_table(SMALL)
        decs = [MixDecoder(payloads[g], SMALL, V, len(toks[g]), mem) for g in range(3)]
        out = [[] for _ in range(3)]
        for i in range(600):
            for g in order:
                if i < len(toks[g]):
                    out[g].append(decs[g].next(ps[g][i]))
        return out

    assert all(np.array_equal(o, t) for o, t in zip(decode((0, 1, 2)), toks))
    assert not all(np.array_equal(o, t) for o, t in zip(decode((1, 0, 2)), toks))
    with pytest.raises(ValueError, match="shared bucket table"):
        MixDecoder(payloads[0], SMALL, V, 600, new_table(MixerParams(hash_bits=11)))


def test_group_feed_from_the_pass_writes_what_feed_writes():
    """GroupEncoder.feed_pass (the compressor's path: the chunks' rows read in place from the LM
    pass's [N, T, V] array, windows in any order) writes the bytes of feed(); it refuses blocks
    that do not lie in the pass and tokens outside the vocabulary."""
    rng = np.random.default_rng(9)
    V, T = 256, 200
    toks = [rng.integers(0, 60, n).astype(np.int32) for n in (530, 410, 0)]
    ps = [lm_vectors(rng, max(1, len(t)), V, "random") for t in toks]
    ref = GroupEncoder(SMALL, V, [len(t) for t in toks])
    enc = GroupEncoder(SMALL, V, [len(t) for t in toks])
    for s in range(0, 530, T):
        blocks = [p[s : s + T] if s < len(t) else None for p, t in zip(ps, toks)]
        tb = [t[s : s + T] if s < len(t) else None for t in toks]
        ref.feed(blocks, tb)
        # the pass: a spare window first, then the chunks' windows in reverse order
        p = rng.integers(0, 1 << 30, (4, T, V)).astype(np.int64)
        wins = np.array([3, 1, -1])
        for g, b in enumerate(blocks):
            if b is not None:
                p[wins[g], : len(b)] = b
        enc.feed_pass(p, wins, tb)
    assert enc.finish() == ref.finish()
    bad = GroupEncoder(SMALL, V, [530, 410, 0])
    p = np.zeros((2, T, V), np.int64)
    with pytest.raises(ValueError, match="do not match"):
        bad.feed_pass(p, np.array([0, 2, -1]), [toks[0][:T], toks[1][:T], None])
    with pytest.raises(ValueError, match="do not match"):
        bad.feed_pass(p.astype(np.int32), np.array([0, 1, -1]), [toks[0][:T], toks[1][:T], None])
    with pytest.raises(ValueError, match="out of range"):
        bad.feed_pass(p, np.array([0, 1, -1]), [toks[0][:T] + V, toks[1][:T], None])
