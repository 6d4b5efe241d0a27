"""End-to-end speed of `lmzip compress` / `lmzip decompress`, KB/s from the wall time of a process.

Run: python benchmarks/bench_speed.py [--quick] [--model PATH] [--sizes 64,256] [--out DIR]

Inputs are the first 64 KB and 256 KB (1 KB = 1000 bytes) of the enwiki_gensim dev set,
decompressed into a temporary directory. The model is --model, else the package's
lmzip/models/default.lmzm, else a random-weight model of the default CPU size (speed does not
depend on the weights; the compressed size does). Every run is `python -m lmzip ...` in a child
process (start-up, model load and kernel self-test included; a 1-byte compress is timed as the
start-up cost), for `--threads 1` and `--threads 2`, default mode and `--lm-only`, and every
decompressed output is compared with the input. Medians of up to --runs runs, taken in passes
(every row once, then every row again): a run that the speeds measured so far project past
--budget seconds (the whole benchmark) is left out, and the table gives each row's run count. The lmzip imported
is the one `python -c "import lmzip"` finds (PYTHONPATH selects a copy; LMZIP_COMMIT names it).
Results: DIR/speed-YYYY-MM-DD[-quick].json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_engine import REPO, git_commit, loadavg, log, machine_info, model_file, versions

CORPUS = Path("/work/shared/corpora/enwiki_gensim.txt.zst")


def lmzip(*args: str) -> subprocess.CompletedProcess:
    # cwd: `python -m` puts the working directory first on sys.path; a neutral one makes the
    # child import the same lmzip as this process (PYTHONPATH or the installed package)
    argv = [sys.executable, "-m", "lmzip", *args]
    return subprocess.run(
        argv, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False
    )


def child_lmzip_path() -> str:
    r = subprocess.run(
        [sys.executable, "-c", "import lmzip; print(lmzip.__file__)"],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip()


CPU_S: list[float] = []  # CPU seconds (user + sys, child and its workers) of each timed_lmzip


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_lmzip(*args: str) -> float:
    """Wall seconds of one `python -m lmzip` run (its CPU seconds are appended to CPU_S)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    r = lmzip(*args)
    dt = time.perf_counter() - t0
    CPU_S.append(_children_cpu() - c0)
    if r.returncode != 0:
        raise RuntimeError(f"lmzip {' '.join(args)} failed: {r.stderr.strip()[-500:]}")
    return dt


def prepare_inputs(tmp: Path, sizes_kb: list[int]) -> list[Path]:
    import zstandard

    with open(CORPUS, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read(max(sizes_kb) * 1000)
    out = []
    for kb in sizes_kb:
        p = tmp / f"enwiki_{kb}k.txt"
        p.write_bytes(data[: kb * 1000])
        out.append(p)
    return out


def resolve_model(arg: str | None, tmp: Path) -> tuple[Path, str]:
    if arg:  # absolute: the lmzip children run in another working directory
        return Path(arg).resolve(), "given"
    from lmzip.container import default_model_path, save_model

    default = default_model_path()
    if default.is_file():
        return default, "package default"
    path = tmp / "random-cpu.lmzm"
    save_model(model_file("cpu"), path, compress=False)
    return path, "random weights, default CPU size"


def run_once(src: Path, model: Path, threads: int, lm_only: bool, tmp: Path) -> tuple:
    """(compress s, decompress s, compressed bytes, chunk methods) of one checked round trip."""
    tag = f"{src.stem}-{threads}-{int(lm_only)}"
    z, back = tmp / f"{tag}.lmz", tmp / f"{tag}.out"
    common = ["-m", str(model), "--threads", str(threads), "-f", "-q"]
    extra = ["--lm-only"] if lm_only else []
    load = loadavg()[0]
    c = timed_lmzip("compress", *common, *extra, "-o", str(z), str(src))
    c_cpu = CPU_S[-1]
    d = timed_lmzip("decompress", *common, "-o", str(back), str(z))
    d_cpu = CPU_S[-1]
    if back.read_bytes() != src.read_bytes():
        raise RuntimeError(f"round trip of {src} FAILED")
    info = json.loads(lmzip("info", "--json", str(z)).stdout)
    return c, d, z.stat().st_size, info.get("chunks"), c_cpu, d_cpu, load


def summarize(src: Path, threads: int, lm_only: bool, runs: list[tuple]) -> dict:
    n = src.stat().st_size
    row = {
        "input": src.name,
        "bytes": n,
        "threads": threads,
        "mode": "lm-only" if lm_only else "default",
        "runs": len(runs),
    }
    if not runs:
        return {**row, "skipped": "skipped (past the time budget)"}
    comp, dec = [r[0] for r in runs], [r[1] for r in runs]
    c, d = statistics.median(comp), statistics.median(dec)
    return {
        **row,
        "compress_s": c,
        "decompress_s": d,
        "compress_kbps": n / 1000 / c,
        "decompress_kbps": n / 1000 / d,
        "compress_runs_s": comp,
        "decompress_runs_s": dec,
        "compress_cpu_s": statistics.median(r[4] for r in runs),
        "decompress_cpu_s": statistics.median(r[5] for r in runs),
        "load1_at_start": [r[6] for r in runs],
        "compressed_bytes": runs[-1][2],
        "bpb": 8 * runs[-1][2] / n,
        "chunks": runs[-1][3],
    }


def markdown(rep: dict) -> str:
    lines = [
        f"# lmzip end-to-end speed {rep['date']}{' (quick)' if rep['quick'] else ''}",
        "",
        (
            f"Machine: {rep['machine']['cpu']}, {rep['machine']['cores']} cores; load average "
            f"before {rep['load_before']}, after {rep['load_after']}  "
        ),
        f"Commit {rep['commit']}, lmzip from {rep['lmzip_imported']}; "
        + ", ".join(f"{k} {v}" for k, v in rep["versions"].items())
        + "  ",
        (
            f"Model: {rep['model']['source']} ({rep['model']['n_params']} params, "
            f"{rep['model']['config']})  "
        ),
        (
            f"Wall time of `python -m lmzip` processes, median of up to {rep['runs']} runs "
            f"(column runs); start-up "
            f"(1-byte compress) {rep['startup_s']:.2f} s wall, {rep.get('startup_cpu_s', 0):.2f} s "
            "CPU, included below; CPU = user + sys of the process and its workers; "
            "1 KB = 1000 bytes."
        ),
        "",
        (
            "| input | threads | mode | compress KB/s | decompress KB/s | compress s (CPU s) | "
            "decompress s (CPU s) | runs | load 1-min | bpb | chunks |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['input']} | {r['threads']} | {r['mode']} | {r['skipped']} |")
            continue
        ch = ", ".join(f"{k} {v}" for k, v in (r["chunks"] or {}).items() if v)
        lines.append(
            f"| {r['input']} | {r['threads']} | {r['mode']} | {r['compress_kbps']:.2f} | "
            f"{r['decompress_kbps']:.2f} | {r['compress_s']:.1f} ({r['compress_cpu_s']:.1f}) | "
            f"{r['decompress_s']:.1f} ({r['decompress_cpu_s']:.1f}) | {r['runs']} | "
            f"{', '.join(f'{x:.1f}' for x in r['load1_at_start'])} | {r['bpb']:.3f} | {ch} |"
        )
    lines += [
        "",
        (
            "`--threads N` asks for N workers; a file with fewer chunks than N (see the "
            "chunks column and lmzip's default chunk size) cannot use them all."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 KB only, 1 run")
    ap.add_argument("--model", help="model file (default: the package's, else a random one)")
    ap.add_argument("--sizes", default="64,256", help="input sizes in KB (1000 bytes)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds for the whole run: runs and sizes that would pass it are left out",
    )
    ap.add_argument("--modes", default="default,lm-only", help="comma list of: default, lm-only")
    ap.add_argument("--tag", default="", help="file name tag: speed-DATE-TAG.json")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.threads = [int(t) for t in a.threads.split(",")]
    a.modes = [m == "lm-only" for m in a.modes.split(",")]
    if a.quick:
        a.sizes, a.runs = [16], 1
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    rep = {
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
        "runs": args.runs,
        "budget_s": args.budget,
        "machine": machine_info(),
        "versions": versions(),
        "commit": git_commit(),
        "lmzip_imported": child_lmzip_path(),
        "load_before": loadavg(),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="lmzip-speed-") as d:
        tmp = Path(d)
        inputs = prepare_inputs(tmp, args.sizes)
        model, source = resolve_model(args.model, tmp)
        minfo = json.loads(lmzip("info", "--json", str(model)).stdout)
        rep["model"] = {
            "path": str(model),
            "source": source,
            "model_id": minfo.get("model_id"),
            "n_params": minfo.get("n_params"),
            "config": minfo.get("config"),
        }
        one = tmp / "one.txt"
        one.write_bytes(b"a")
        rep["startup_s"] = statistics.median(
            timed_lmzip(
                "compress", "-m", str(model), "-f", "-q", "-o", str(tmp / "one.lmz"), str(one)
            )
            for _ in range(args.runs)
        )
        rep["startup_cpu_s"] = statistics.median(CPU_S[-args.runs :])
        log(f"model {model} ({source}); start-up {rep['startup_s']:.2f} s")
        # Pass k runs every row a k-th time, smallest input first, while the time measured so
        # far projects the run inside the budget: every row gets its first run before any row
        # gets a second.
        deadline = t0 + args.budget
        rows = [(src, th, lm) for src in inputs for th in args.threads for lm in args.modes]
        runs: dict = {r: [] for r in rows}
        per_byte = 0.0  # slowest (compress + decompress) seconds per byte seen so far
        for k in range(args.runs):
            for src, th, lm in rows:
                n = src.stat().st_size
                if time.perf_counter() + n * per_byte > deadline:
                    continue
                log(f"pass {k + 1}: {src.name} threads {th} {'lm-only' if lm else 'default'}")
                out = run_once(src, model, th, lm, tmp)
                log(f"  {n / 1000 / out[0]:.2f} / {n / 1000 / out[1]:.2f} KB/s")
                runs[(src, th, lm)].append(out)
                per_byte = max(per_byte, (out[0] + out[1]) / n)
        rep["rows"] = [summarize(src, th, lm, runs[(src, th, lm)]) for src, th, lm in rows]
    rep["load_after"] = loadavg()
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    md = markdown(rep)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    stem = f"speed-{rep['date']}{tag}{'-quick' if args.quick else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(rep, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(md + "\n")
    log(f"wrote {args.out / stem}.json/.md in {rep['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
