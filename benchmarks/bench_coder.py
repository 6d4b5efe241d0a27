"""Range coder benchmark: encode/decode throughput (M symbols/s) and overhead against ideal.

Run: python benchmarks/bench_coder.py [--n 2000000] [--runs 5] [--out benchmarks/results/...]

Each case is one frequency table (Zipf-like, V = 1024, or a skewed binary one, V = 2) at P = 16
or P = 24; symbols are drawn from the table itself, so the ideal cost is its entropy. Encode is
`encode_symbols` over precomputed (cum, freq) arrays; decode is `decode_symbols` (binary search
in the cumulative table, then advance), both njit loops as a caller's own numba loop runs them.
Times are the median of --runs after one warm-up call (compilation is cached, not measured), by
wall clock and by CPU time; the JSON records the load average, as the machine is shared.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import time

import numba
import numpy as np

from lmzip import coder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(precision: int, v: int, s: float) -> np.ndarray:
    """freq[v], each >= 1, total 2^P, proportional to 1 / rank^s."""
    w = 1.0 / np.arange(1, v + 1) ** s
    freq = 1 + np.floor(w / w.sum() * ((1 << precision) - v)).astype(np.int64)
    freq[0] += (1 << precision) - freq.sum()
    return freq


def median_time(fn, runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds. CPU time is less disturbed by other work on a shared machine."""
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def bench_case(precision: int, v: int, s: float, n: int, runs: int, seed: int) -> dict:
    freq = table(precision, v, s)
    cumt = np.concatenate([[0], np.cumsum(freq)]).astype(np.int64)
    syms = np.random.default_rng(seed).choice(v, size=n, p=freq / (1 << precision))
    cum, f = cumt[syms], freq[syms]
    data = coder.encode_symbols(cum[:10], f[:10], precision)  # warm-up (cached compile)
    coder.decode_symbols(data, cumt, 10, precision)
    enc_s = median_time(lambda: coder.encode_symbols(cum, f, precision), runs)
    data = coder.encode_symbols(cum, f, precision)
    dec_s = median_time(lambda: coder.decode_symbols(data, cumt, n, precision), runs)
    back, overrun = coder.decode_symbols(data, cumt, n, precision)
    assert overrun == 0 and np.array_equal(back, syms), "round trip failed"
    ideal = coder.ideal_bits(f, precision) / 8
    return {
        "precision": precision,
        "V": v,
        "zipf_s": s,
        "symbols": n,
        "bits_per_symbol": 8 * ideal / n,
        "encode_msym_s": n / enc_s[0] / 1e6,
        "decode_msym_s": n / dec_s[0] / 1e6,
        "encode_msym_cpu_s": n / enc_s[1] / 1e6,
        "decode_msym_cpu_s": n / dec_s[1] / 1e6,
        "bytes": len(data),
        "ideal_bytes": ideal,
        "overhead_bytes": len(data) - ideal,
        "overhead_pct": 100 * (len(data) - ideal) / ideal,
    }


def machine_info() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "loadavg_1min": os.getloadavg()[0],  # other work on the machine while measuring
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="symbols per case")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--out", default=None, help="JSON path (default results/coder-DATE.json)")
    args = ap.parse_args()
    # Zipf exponent 1.1 for V = 1024 (a token LM's shape); s = 2 for V = 2 gives p = 0.8 / 0.2.
    cases = [(16, 1024, 1.1), (24, 1024, 1.1), (16, 2, 2.0), (24, 2, 2.0)]
    rows = [bench_case(p, v, s, args.n, args.runs, seed=i) for i, (p, v, s) in enumerate(cases)]
    # Msym/s by wall clock, CPU time in parentheses.
    print(f"{'P':>3} {'V':>5} {'bits/sym':>8} {'encode Msym/s':>15} {'decode Msym/s':>15} "
          f"{'bytes':>9} {'over B':>7} {'over %':>8}")  # fmt: skip
    for r in rows:
        enc = f"{r['encode_msym_s']:.1f} ({r['encode_msym_cpu_s']:.1f})"
        dec = f"{r['decode_msym_s']:.1f} ({r['decode_msym_cpu_s']:.1f})"
        print(f"{r['precision']:>3} {r['V']:>5} {r['bits_per_symbol']:>8.3f} {enc:>15} {dec:>15} "
              f"{r['bytes']:>9} {r['overhead_bytes']:>7.2f} {r['overhead_pct']:>8.5f}")  # fmt: skip
    meta = machine_info() | {"runs": args.runs}
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"coder-{meta['date']}.json")
    with open(out, "w") as fh:
        json.dump({"meta": meta, "results": rows}, fh, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
