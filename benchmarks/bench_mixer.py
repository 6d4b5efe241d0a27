"""Mixer benchmark: bits per byte (LM alone vs mixed) with stand-in LMs, and tokens per second.

Run: python benchmarks/bench_mixer.py [--quick] [--out benchmarks/results/mixer-DATE.json]
     python benchmarks/bench_mixer.py --real DIR [--kib 2048] [--chunks 256,1024,2048]
         [--hash-bits 20] [--files enwiki_gensim,lee_news,shakespeare] [--out F]

--real uses the shipped model's own LM rows (api.lm_probabilities) for the first --kib KiB of each
dev file, computed once (about 1,500 tokens/s per core) and cached in DIR as NAME.toks.npy and
NAME.rows.i32 (int32 [n, V], 4 KiB per token); it reports LM-only bpb (P = 16 table rule) and the
mixer's real payload bpb for each chunk size (the text is cut into chunks of that many bytes at
token boundaries, one fresh mixer state per chunk, as api does), and encode/decode us per token
on the first 40,000 tokens (decode one token at a time inside numba, as the batched decoder does).

The real LM is not trained yet, so the LM vectors come from stand-ins built on a sample of
train_mix (never on a dev set), tokenized with the BPE vocab-1024 model:
- bigram: interpolated bigram/unigram, the weak LM (p = floor(q / max q * 2^30), Q30 convention);
- strong: 0.9 of the mass on one token, the rest bigram; that token is the true next token on
  90 % of positions (seeded) and a random one otherwise, so the LM is calibrated and far better
  than any adaptive model: mixing must not make it worse.
- oracle (synthetic): each position has its own random distribution (softmax of Gaussian logits,
  scale 0.5-6) and the token is drawn from it; the LM gives exactly that distribution, so the LM
  alone is optimal and every bit the mixer adds is loss.
LM-only cost uses the table rule freq_i = 1 + floor(p_i (2^P - V) / sum p), the remainder to the
lowest-index argmax, at P = 16 and P = 20. Each dev file is one chunk.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import time

import numpy as np
import sentencepiece as spm
import zstandard
from numba import njit

from lmzip.mixer import MixDecoder, MixEncoder, MixerParams, mix_decode_token

CORPORA = "/work/shared/corpora"
TOKENIZER = "/work/data/tok1024.model"
DEV = ("enwiki_gensim", "lee_news", "shakespeare")
BLOCK = 4096  # LM rows materialized at a time: [BLOCK, V] int64


def read_text(name: str) -> bytes:
    with open(os.path.join(CORPORA, name + ".txt.zst"), "rb") as f:
        return zstandard.ZstdDecompressor().decompress(f.read(), max_output_size=1 << 31)


def train_sample(n_parts: int = 24, part: int = 1_000_000) -> bytes:
    # train_mix is a concatenation of very different sources: sample it evenly.
    raw = read_text("train_mix")
    step = len(raw) // n_parts
    return b"\n".join(raw[k * step : k * step + part] for k in range(n_parts))


def bigram_table(train: np.ndarray, V: int) -> np.ndarray:
    """int64[V + 1, V] Q30 rows; row V is the unigram (for position 0)."""
    c2 = np.bincount(train[:-1].astype(np.int64) * V + train[1:], minlength=V * V)
    c2 = c2.reshape(V, V).astype(np.float64)
    uni = (np.bincount(train, minlength=V) + 0.5) / (len(train) + 0.5 * V)
    n = c2.sum(1, keepdims=True)
    lam = n / (n + 20.0)
    q = lam * c2 / np.maximum(n, 1) + (1 - lam) * uni
    q = np.vstack([q, uni])
    return np.floor(q / q.max(1, keepdims=True) * (1 << 30)).astype(np.int64)


def lm_rows(table, toks, i0, i1, sure=None):
    prev = np.concatenate([[table.shape[0] - 1], toks[:-1]])[i0:i1]
    rows = table[prev]
    if sure is not None:
        # 0.9 of the mass on token sure[i]: its Q30 value becomes 9x the rest's total.
        t = sure[i0:i1]
        r = rows.astype(np.float64)
        idx = np.arange(len(r))
        rest = r.sum(1) - r[idx, t]
        r = r / 9.0
        r[idx, t] = rest
        rows = np.floor(r / r.max(1, keepdims=True) * (1 << 30)).astype(np.int64)
    return rows


def sure_tokens(toks, V, seed=0):
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(toks)) >= 0.9
    return np.where(wrong, rng.integers(0, V, len(toks)), toks).astype(np.int32)


def lm_only_bits(rows, toks, P):
    V = rows.shape[1]
    s = rows.sum(1)
    f = 1 + (rows * ((1 << P) - V)) // s[:, None]
    rem = (1 << P) - f.sum(1)
    f[np.arange(len(f)), rows.argmax(1)] += rem
    return float(np.sum(P - np.log2(f[np.arange(len(f)), toks])))


def oracle_rows(n, V, i0, i1, seed=1):
    """Rows i0..i1 of the oracle stand-in and their sampled tokens (deterministic per row)."""
    rows = np.empty((i1 - i0, V), np.int64)
    toks = np.empty(i1 - i0, np.int32)
    for i in range(i0, i1):
        rng = np.random.default_rng([seed, i])
        z = rng.standard_normal(V) * rng.uniform(0.5, 6.0)
        q = np.exp(z - z.max())
        rows[i - i0] = np.floor(q * (1 << 30)).astype(np.int64)
        toks[i - i0] = rng.choice(V, p=q / q.sum())
    return rows, toks


def run_oracle(n, V, prm):
    enc = MixEncoder(prm, V, n)
    lm16 = lm20 = 0.0
    for i0 in range(0, n, BLOCK):
        rows, tb = oracle_rows(n, V, i0, min(n, i0 + BLOCK))
        lm16 += lm_only_bits(rows, tb, 16)
        lm20 += lm_only_bits(rows, tb, 20)
        enc.feed(rows, tb)
    return {"lm16_bits": lm16, "lm20_bits": lm20, "mixed_bits": 8.0 * len(enc.finish())}


def run_file(table, toks, prm, strong, seed=0):
    V = table.shape[1]
    mask = sure_tokens(toks, V, seed) if strong else None
    enc = MixEncoder(prm, V, len(toks))
    lm16 = lm20 = 0.0
    t0 = time.perf_counter()
    t_enc = 0.0
    for i0 in range(0, len(toks), BLOCK):
        rows = lm_rows(table, toks, i0, min(i0 + BLOCK, len(toks)), mask)
        tb = toks[i0 : i0 + BLOCK]
        lm16 += lm_only_bits(rows, tb, 16)
        lm20 += lm_only_bits(rows, tb, 20)
        t1 = time.perf_counter()
        enc.feed(rows, tb)
        t_enc += time.perf_counter() - t1
    payload = enc.finish()
    return {"lm16_bits": lm16, "lm20_bits": lm20, "mixed_bits": 8.0 * len(payload),
            "enc_s": t_enc, "total_s": time.perf_counter() - t0, "payload": payload, "sure": mask}  # fmt: skip


@njit
def _decode_rows(head, body, mem, hist, cst, data, rows, out):
    # One token at a time from inside numba, as a batched decode loop calls it.
    for i in range(rows.shape[0]):
        out[i] = mix_decode_token(head, body, mem, hist, cst, data, rows[i])


def decode_speed(table, toks, prm, payload, n, sure):
    """Decode the first n tokens one at a time (the decoder's real access pattern)."""
    V = table.shape[1]
    out = np.empty(n, np.int32)
    rows = lm_rows(table, toks, 0, n, sure)
    _decode_rows(*MixDecoder(payload, prm, V, len(toks)).arrays, rows[:1], out[:1])  # compile
    dec = MixDecoder(payload, prm, V, len(toks))
    t0 = time.perf_counter()
    _decode_rows(*dec.arrays, rows, out)
    dt = time.perf_counter() - t0
    assert np.array_equal(out, toks[:n]), "decode mismatch"
    return n / dt


def real_rows(cache: str, name: str, kib: int):
    """(tokens, memmapped Q30 rows int32 [n, V], byte length of each token) of the dev prefix."""
    from lmzip import api

    os.makedirs(cache, exist_ok=True)
    tf, rf = os.path.join(cache, name + ".toks.npy"), os.path.join(cache, name + ".rows.i32")
    model = api.load_model(None)
    V = model.engine.vocab_size
    if not os.path.exists(tf):
        toks = np.asarray(model.tokenizer.encode(read_text(name)[: kib << 10]), np.int32)
        with open(rf + ".part", "wb") as f:
            for r in api.lm_probabilities(model, toks, 4):
                f.write(np.ascontiguousarray(r, dtype=np.int32).tobytes())
        os.replace(rf + ".part", rf)
        np.save(tf, toks)
    toks = np.load(tf)
    rows = np.memmap(rf, np.int32, "r", shape=(len(toks), V))
    lens = np.array([len(model.tokenizer.decode([i])) for i in range(V)], np.int64)
    return toks, rows, lens[toks]


def run_real(args):
    prm = MixerParams(hash_bits=args.hash_bits)
    out = []
    for name in args.files.split(","):
        toks, rows, lens = real_rows(args.real, name, args.kib)
        cb = np.cumsum(lens)
        nbytes = int(cb[-1])
        lm16 = sum(
            lm_only_bits(np.asarray(rows[i : i + BLOCK], np.int64), toks[i : i + BLOCK], 16)
            for i in range(0, len(toks), BLOCK)
        )
        row = {"file": name, "bytes": nbytes, "tokens": len(toks), "bpb_lm16": lm16 / nbytes}
        for kib in [int(c) for c in args.chunks.split(",")]:
            bounds = [0]
            while bounds[-1] < len(toks):
                start = cb[bounds[-1] - 1] if bounds[-1] else 0
                bounds.append(int(np.searchsorted(cb, start + (kib << 10), "right")))
            size = 0
            for a, b in zip(bounds[:-1], bounds[1:]):
                enc = MixEncoder(prm, rows.shape[1], b - a)
                for i in range(a, b, BLOCK):
                    j = min(b, i + BLOCK)
                    enc.feed(np.asarray(rows[i:j], np.int64), toks[i:j])
                size += len(enc.finish())
            row[f"bpb_mixed_{kib}k"] = 8 * size / nbytes
        n = min(40_000, len(toks))
        r = np.asarray(rows[:n], np.int64)
        t0 = time.perf_counter()
        enc = MixEncoder(prm, r.shape[1], n)
        enc.feed(r, toks[:n])
        payload = enc.finish()
        row["enc_us_tok"] = 1e6 * (time.perf_counter() - t0) / n
        dec_out = np.empty(n, np.int32)
        _decode_rows(*MixDecoder(payload, prm, r.shape[1], n).arrays, r[:1], dec_out[:1])
        dec = MixDecoder(payload, prm, r.shape[1], n)
        t0 = time.perf_counter()
        _decode_rows(*dec.arrays, r, dec_out)
        row["dec_us_tok"] = 1e6 * (time.perf_counter() - t0) / n
        assert np.array_equal(dec_out, toks[:n]), "decode mismatch"
        print(json.dumps(row), flush=True)
        out.append(row)
    return prm, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 300k tokens of each dev file")
    ap.add_argument("--real", default=None, metavar="DIR", help="shipped LM rows, cached in DIR")
    ap.add_argument("--kib", type=int, default=2048, help="--real: KiB of each dev file")
    ap.add_argument("--chunks", default="256,1024,2048", help="--real: chunk sizes in KiB")
    ap.add_argument("--hash-bits", type=int, default=MixerParams().hash_bits,
                    help="--real: mixer hash_bits (lmzip picks it from the chunk length)")
    ap.add_argument("--files", default=",".join(DEV), help="--real: dev files to run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.real:
        prm, results = run_real(args)
        if args.out:
            meta = {"date": datetime.date.today().isoformat(), "params": prm.to_bytes().hex(),
                    "kib": args.kib, "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()}
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1)
        return
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    V = sp.get_piece_size()
    train = np.array(sp.encode(train_sample().decode("utf-8", "ignore")), np.int32)
    table = bigram_table(train, V)
    prm = MixerParams()
    results = []
    print(f"{'file':14} {'LM':7} {'tokens':>8} {'LM16':>7} {'LM20':>7} {'mixed':>7} {'gain':>7}"
          f" {'enc tok/s':>10} {'dec tok/s':>10}")  # fmt: skip
    for name in DEV:
        text = read_text(name)
        toks = np.array(sp.encode(text.decode("utf-8")), np.int32)
        nbytes = len(text)
        if args.quick:
            toks = toks[:300_000]
            nbytes = len(sp.decode(toks.tolist()).encode("utf-8"))
        for lm in ("bigram", "strong"):
            r = run_file(table, toks, prm, lm == "strong")
            dec_rate = decode_speed(
                table, toks, prm, r["payload"], min(len(toks), 20_000), r["sure"]
            )
            bpb = {k: r[k + "_bits"] / nbytes for k in ("lm16", "lm20", "mixed")}
            gain = 1 - bpb["mixed"] / bpb["lm20"]
            row = {"file": name, "lm": lm, "tokens": len(toks), "bytes": nbytes,
                   "bpb_lm16": bpb["lm16"], "bpb_lm20": bpb["lm20"], "bpb_mixed": bpb["mixed"],
                   "enc_tok_s": len(toks) / r["enc_s"], "dec_tok_s": dec_rate}  # fmt: skip
            results.append(row)
            print(f"{name:14} {lm:7} {len(toks):8d} {bpb['lm16']:7.4f} {bpb['lm20']:7.4f} "
                  f"{bpb['mixed']:7.4f} {100 * gain:6.2f}% {row['enc_tok_s']:10.0f} "
                  f"{dec_rate:10.0f}", flush=True)  # fmt: skip
    n_or = 40_000 if args.quick else 200_000
    r = run_oracle(n_or, V, prm)
    loss = r["mixed_bits"] / r["lm20_bits"] - 1
    results.append({"file": "synthetic", "lm": "oracle", "tokens": n_or,
                    "bits_per_token_lm16": r["lm16_bits"] / n_or,
                    "bits_per_token_lm20": r["lm20_bits"] / n_or,
                    "bits_per_token_mixed": r["mixed_bits"] / n_or})  # fmt: skip
    print(f"oracle LM, {n_or} tokens: bits/token LM16 {r['lm16_bits'] / n_or:.4f} "
          f"LM20 {r['lm20_bits'] / n_or:.4f} mixed {r['mixed_bits'] / n_or:.4f} "
          f"({100 * loss:+.2f}% vs LM20)")  # fmt: skip
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        meta = {
            "date": datetime.date.today().isoformat(),
            "commit": commit.stdout.strip(),
            "machine": platform.machine(),
            "cpu": platform.processor(),
            "quick": args.quick,
            "params": prm.to_bytes().hex(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),  # speeds are only comparable on a quiet machine
            "tokenizer": TOKENIZER,
            "stand_in_train": "train_mix, 24 x 1 MB evenly spaced",
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
