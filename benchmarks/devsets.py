"""Bits per byte of lmzip on the full dev sets, both modes, with the model's own yardsticks.

    python benchmarks/devsets.py [--model PATH] [--threads N] [--out DIR]

Runs `lmzip verify --no-roundtrip --json` on the three dev sets (the whole files: sizes are
measured from the real payloads and stream framing; round trips are covered by the tests and by
benchmarks/compare.py) and a timed compress/decompress round trip of a 256 KiB slice of each,
then writes benchmarks/results/devsets-YYYY-MM-DD.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
FILES = ["enwiki_gensim", "lee_news", "shakespeare"]
CLASSICAL = {  # shared/corpora/README.md, measured on this machine kind
    "7z PPMd -mx9": [2.011, 2.069, 2.021],
    "zpaq -m5": [1.826, 1.913, 1.867],
}


def _lmzip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmzip", *args], check=True,
                          capture_output=True, text=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--slice", type=int, default=256 * 1024)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--limit", type=int, default=0, help="smoke test: first N bytes of each file")
    a = ap.parse_args()
    model = ["-m", a.model] if a.model else []
    tmp = Path(tempfile.mkdtemp())
    paths = []
    for name in FILES:
        p = tmp / f"{name}.txt"
        with open(CORPORA / f"{name}.txt.zst", "rb") as f:
            p.write_bytes(zstandard.ZstdDecompressor().stream_reader(f).read(a.limit or -1))
        paths.append(str(p))
    t0 = time.time()
    res = json.loads(_lmzip("verify", "--no-roundtrip", "--json", "--threads", str(a.threads),
                            *model, *paths).stdout)  # fmt: skip
    verify_s = time.time() - t0
    Path(a.out).mkdir(parents=True, exist_ok=True)  # the long part, kept even if slices fail
    (Path(a.out) / f"devsets-{datetime.date.today().isoformat()}-verify.json").write_text(
        json.dumps(res, indent=1)
    )
    speed = []
    for p in paths:
        s = Path(p + ".slice")
        s.write_bytes(Path(p).read_bytes()[: a.slice])
        t = time.time()
        _lmzip(
            "compress", "-q", "-f", *model, "--threads", str(a.threads), str(s), "-o", f"{s}.lmz"
        )
        tc = time.time() - t
        t = time.time()
        _lmzip("decompress", "-q", "-f", *model, "--threads", str(a.threads), f"{s}.lmz", "-o",
               f"{s}.out")  # fmt: skip
        td = time.time() - t
        ok = Path(f"{s}.out").read_bytes() == s.read_bytes()
        speed.append({"file": Path(p).stem, "bytes": s.stat().st_size, "compress_s": tc,
                      "decompress_s": td, "roundtrip_ok": ok,
                      "bpb": 8 * Path(f"{s}.lmz").stat().st_size / s.stat().st_size})  # fmt: skip
    info = json.loads(_lmzip("info", "--json", *(model[1:] if model else [])).stdout)
    commit = os.environ.get("LMZIP_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    out = {"date": datetime.date.today().isoformat(), "commit": commit,
           "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                       "load": os.getloadavg()},
           "model": {"model_id": info["model_id"], "size_bytes": info["size_bytes"],
                     "provenance": info.get("provenance")},
           "verify": res, "verify_seconds": verify_s, "speed": speed}  # fmt: skip
    stem = Path(a.out) / f"devsets-{out['date']}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    rows = ["| file | bytes | model_bpb | engine_bpb | real_bpb --lm-only | real_bpb (mixed) | "
            "7z PPMd | zpaq -m5 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(res["files"]):
        rows.append(f"| {Path(r['file']).stem} | {r['bytes']:,} | {r['model_bpb']:.3f} | "
                    f"{r['engine_bpb']:.3f} | {r['real_bpb_lm_only']:.3f} | {r['real_bpb']:.3f} | "
                    f"{CLASSICAL['7z PPMd -mx9'][i]:.3f} | {CLASSICAL['zpaq -m5'][i]:.3f} |")  # fmt: skip
    t = res["total"]
    total_model = 8 * (t["compressed_bytes"] + info["size_bytes"]) / t["bytes"]
    rows.append(f"| all three | {t['bytes']:,} | {t['model_bpb']:.3f} | {t['engine_bpb']:.3f} | "
                f"{t['real_bpb_lm_only']:.3f} | {t['real_bpb']:.3f} | | |")  # fmt: skip
    rows += ["", f"Amortized (model container's {info['size_bytes']:,} bytes counted once against "
             f"all three files, mixed mode): {total_model:.3f} bits per byte.", "",
             "| slice | bytes | compress KB/s | decompress KB/s | bpb | round trip |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in speed:
        rows.append(f"| {r['file']} | {r['bytes']:,} | {r['bytes'] / 1e3 / r['compress_s']:.1f} | "
                    f"{r['bytes'] / 1e3 / r['decompress_s']:.1f} | {r['bpb']:.3f} | "
                    f"{'ok' if r['roundtrip_ok'] else 'FAILED'} |")  # fmt: skip
    rows += ["", f"Commit {commit}; load average {os.getloadavg()}; speeds are wall time of the "
             "CLI including start-up, one run each."]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
