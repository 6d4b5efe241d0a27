"""Peak memory of `lmzip compress` / `lmzip decompress` against input size (docs/reliability.md).

    python benchmarks/bench_scale.py --sizes 1M,4M,16M        # a few minutes on 2 cores
    python benchmarks/bench_scale.py --sizes 1G               # the full claim: hours on CPU

What it measures: each run is a fresh `python -m lmzip` process (--threads 1, default chunk and
batch sizes) on random bytes, timed, with its peak resident set size (ru_maxrss from wait4).
Random bytes are the fast path: every chunk is still tokenized and scored by the model during
compression (the encoder must try the model before it stores a chunk), but all chunks end up
stored, so decompression is I/O plus checksums. The model is a tiny random-weight one built here
(3 layers, d 64, 512-piece tokenizer), so time goes to the pipeline, not to a big model.
The claim under test: peak RSS is flat in the input size (bounded by chunk size x batch size x
jobs in flight), not proportional to it. Results: benchmarks/results/scale-DATE.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(s: str) -> int:
    return int(s[:-1]) * UNITS[s[-1].upper()] if s[-1].upper() in UNITS else int(s)


def make_model(path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import LEE, random_model_file

    from lmzip.container import save_model
    from lmzip.tokenizer import train_tokenizer

    tok = train_tokenizer([LEE], 512, sample_bytes=300_000).model_bytes
    save_model(random_model_file(tok), path, compress=False)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:  # 1 MiB at a time: the generator itself stays small
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def run(args: list[str]) -> tuple[float, int, int]:
    """-> (seconds, peak RSS in bytes, exit status) of one lmzip process."""
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "lmzip", *args])
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t, usage.ru_maxrss * 1024, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1M,4M", help="comma-separated, e.g. 1M,64M,1G")
    ap.add_argument("--workdir", default=None, help="where the (large) files go")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        d = Path(d)
        model = d / "tiny.lmzm"
        make_model(model)
        for size in map(parse_size, a.sizes.split(",")):
            src, lmz, back = d / "in.bin", d / "in.bin.lmz", d / "back.bin"
            write_random(src, size)
            common = ["-q", "-f", "-m", str(model), "--threads", "1"]
            tc, rc_, sc = run(["compress", *common, str(src), "-o", str(lmz)])
            td, rd, sd = run(["decompress", *common, str(lmz), "-o", str(back)])
            same = (
                sc == sd == 0
                and subprocess.run(["cmp", "-s", src, back], check=False).returncode == 0
            )
            row = {"bytes": size, "compressed_bytes": lmz.stat().st_size if sc == 0 else None,
                   "compress_s": round(tc, 2), "compress_peak_rss_mb": round(rc_ / 2**20, 1),
                   "decompress_s": round(td, 2), "decompress_peak_rss_mb": round(rd / 2**20, 1),
                   "round_trip_ok": same}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            for p in (src, lmz, back):
                p.unlink(missing_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    meta = {"date": dt.date.today().isoformat(), "commit": commit, "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "input": "random bytes (all chunks stored)", "threads": 1}  # fmt: skip
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"scale-{meta['date']}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [("| bytes | compress s | compress peak RSS MB | decompress s | "
              "decompress peak RSS MB | round trip |"), "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['bytes']:,} | {r['compress_s']} | {r['compress_peak_rss_mb']} | "
                     f"{r['decompress_s']} | {r['decompress_peak_rss_mb']} | "
                     f"{r['round_trip_ok']} |")  # fmt: skip
    head = f"# lmzip scale benchmark {meta['date']} (commit {commit}, {meta['cpus']} CPUs)\n\n"
    stem.with_suffix(".md").write_text(head + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
