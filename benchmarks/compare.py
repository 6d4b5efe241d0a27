"""Compare lmzip with the classical compressors on the dev sets; write dated JSON, markdown, PNGs.

    bash benchmarks/setup.sh                      # once: installs the compressors
    python benchmarks/compare.py --runs 3         # lmzip + classical on the three dev sets
    python benchmarks/compare.py --no-lmzip       # classical only
    python benchmarks/compare.py --quick          # smoke test: 1 run, first 100 kB of each file
    python benchmarks/compare.py --lmzip-runs 1 --no-lm-only   # the README's run (lmzip is slow)

Writes benchmarks/results/compare-YYYY-MM-DD.{json,md} and -bpb.png, -pareto.png. Progress goes
to stderr. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import compressors as cz
from compressors import Row

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
DEV_SETS = ["enwiki_gensim.txt.zst", "lee_news.txt.zst", "shakespeare.txt.zst"]
QUICK_BYTES = 100_000  # --quick cuts every file to this many bytes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "files", nargs="*", type=Path, help="text files, plain or .zst (default: dev sets)"
    )
    p.add_argument("--runs", type=int, default=3, help="timed runs per pair; speeds are medians")
    p.add_argument("--lmzip-model", type=Path, help="model container passed to lmzip --model")
    p.add_argument("--no-lmzip", action="store_true", help="classical compressors only")
    p.add_argument("--no-lm-only", action="store_true", help="skip the `lmzip --lm-only` rows")
    p.add_argument("--lmzip-runs", type=int, default=0,
                   help="timed runs per file for lmzip (default: --runs); lmzip is slow")  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results dir")
    p.add_argument("--quick", action="store_true", help=f"1 run, first {QUICK_BYTES:,} bytes only")
    p.add_argument("--stem", default="compare",
                   help="result file names: STEM-YYYY-MM-DD.* (heldout.py's texts: heldout)")  # fmt: skip
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if args.quick:
        args.runs = 1
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def label_of(path: Path) -> str:
    name = path.name
    for suffix in (".zst", ".txt"):
        name = name.removesuffix(suffix)
    return name


def prepare_files(paths: list[Path], tmp: Path, quick: bool) -> list[tuple[str, Path]]:
    """Plain copies of the inputs in tmp: .zst decompressed, cut short under --quick.

    Inputs are only read, so ../shared is never written to.
    """
    out = []
    for path in paths:
        label = label_of(path)
        dst = tmp / f"{label}.txt"
        if path.suffix == ".zst":
            import zstandard

            with open(path, "rb") as fin, open(dst, "wb") as fout:
                zstandard.ZstdDecompressor().copy_stream(fin, fout)
        elif quick:
            dst.write_bytes(path.read_bytes())
        else:
            dst = path.resolve()  # measured in place
        if quick:
            data = dst.read_bytes()[:QUICK_BYTES]
            dst = tmp / f"{label}.txt"
            dst.write_bytes(data)
        out.append((label, dst))
    return out


# -- machine and provenance -----------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
    }


def git_commit() -> str:
    if os.environ.get("LMZIP_COMMIT"):  # a run from an exported tree (git archive) names its commit
        return os.environ["LMZIP_COMMIT"]
    res = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    return res.stdout.strip() or "unknown"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def reference_bpb(readme: Path) -> dict[tuple[str, str], float]:
    """The classical-compressor table of shared/corpora/README.md as {(compressor, file): bpb}."""
    ref: dict[tuple[str, str], float] = {}
    header: list[str] | None = None
    for line in _read(str(readme)).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            header = None
        elif cells[0] == "file" and any("zstd" in c for c in cells):
            header = cells
        elif header and len(cells) == len(header) and not set(cells[0]) <= set("-: "):
            for name, cell in zip(header[1:], cells[1:]):
                try:
                    ref[(name, cells[0])] = float(cell)
                except ValueError:
                    pass  # "-": not measured there
    return ref


# -- results --------------------------------------------------------------------------------


def _fmt_speed(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _cell(row: Row | None, text: str) -> str:
    if row is None:
        return "-"
    if not row.ok:
        return "FAILED" if row.status.startswith("FAILED") else "missing"
    return text


def total_bpb(rows: list[Row], extra_bytes: int = 0) -> float | None:
    """bpb over all files together (byte-weighted), extra_bytes counted once (a model)."""
    if not rows or not all(r.ok for r in rows):
        return None
    compressed = sum(r.compressed_bytes for r in rows) + extra_bytes
    return cz.bpb(compressed, sum(r.original_bytes for r in rows))


def markdown_tables(rows: list[Row], model_bytes: dict[str, int] | None = None) -> str:
    """The bpb table (+ all-files and amortized columns) and the speed/RSS table."""
    model_bytes = model_bytes or {}
    comps = list(dict.fromkeys(r.compressor for r in rows))
    files = list(dict.fromkeys(r.file for r in rows))
    by = {(r.compressor, r.file): r for r in rows}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = ["### Bits per byte (8 x compressed / original; lower is better)", ""]
    head = ["compressor", *files, "all files", "all files + model"]
    out += [line(head), line(["---"] * len(head))]
    for c in comps:
        mine = [by.get((c, f)) for f in files]
        cells = [_cell(r, f"{r.bpb:.3f}" if r and r.ok else "") for r in mine]
        # Totals only over the full set of files, else they compare different texts.
        full = mine if all(mine) else []
        tot = total_bpb(full)
        amort = total_bpb(full, model_bytes.get(c, 0))
        cells += [f"{tot:.3f}" if tot is not None else "-", f"{amort:.3f}" if amort else "-"]
        out.append(line([c, *cells]))
    out += ["", "### Speed: compress / decompress, KB/s of original text (median); peak RSS", ""]
    head = ["compressor", *files, "peak RSS MB (c / d)"]
    out += [line(head), line(["---"] * len(head))]
    for c in comps:
        cells = []
        for f in files:
            r = by.get((c, f))
            text = f"{_fmt_speed(r.compress_kbps)} / {_fmt_speed(r.decompress_kbps)}" if r else ""
            cells.append(_cell(r, text))
        ok = [r for f in files if (r := by.get((c, f))) and r.ok]
        rss = (f"{max(r.compress_rss_mb for r in ok):,.0f} / "
               f"{max(r.decompress_rss_mb for r in ok):,.0f}") if ok else "-"  # fmt: skip
        out.append(line([c, *cells, rss]))
    return "\n".join(out) + "\n"


def _signed(d: float) -> str:
    # A difference that rounds to zero prints as 0.000, not as -0.000.
    return f"{d:+.3f}" if round(d, 3) != 0 else "0.000"


def reference_table(rows: list[Row], ref: dict[tuple[str, str], float]) -> str:
    """bpb here minus the README's, for every pair both have."""
    pairs = [
        (r, ref[(r.compressor, r.file)]) for r in rows if r.ok and (r.compressor, r.file) in ref
    ]
    if not pairs:
        return ""
    out = ["| compressor | file | README | here | difference |", "|---|---|---|---|---|"]
    for r, want in pairs:
        out.append(
            f"| {r.compressor} | {r.file} | {want:.3f} | {r.bpb:.3f} | {_signed(r.bpb - want)} |"
        )
    worst = max(abs(r.bpb - want) for r, want in pairs)
    return "\n".join(out) + f"\n\nLargest difference: {worst:.4f} bits per byte.\n"


def write_results(report: dict, rows: list[Row], out: Path, stem: str, ref_md: str) -> list[Path]:
    import plots

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    load = m["load_1min"]
    model_bytes = {c: report["lmzip"]["model_bytes"] for c in report["lmzip"]["rows"]}
    md = [
        f"# lmzip against classical compressors, {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}  ",
        f"Commit: {report['git_commit']}; {report['runs']} run(s) per pair "
        f"({report.get('lmzip_runs', report['runs'])} for lmzip), speeds are medians"
        + ("; QUICK: first 100 kB of each file only" if report["quick"] else "")
        + "  ",
        f"Peak RSS: {report['rss_method']}  ",
        f"Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} on {m['cores']} cores;"
        + " above the core count, other work slowed the speeds.",
        "",
        markdown_tables(rows, model_bytes),
    ]
    if report["lmzip"]["rows"]:
        mb = report["lmzip"]["model_bytes"]
        path = report["lmzip"]["model_path"]
        md += [f"lmzip model: `{path}`, {mb:,} bytes, counted once in 'all files + model'.", ""]
    if ref_md:
        md += ["### Against the table in shared/corpora/README.md", "", ref_md]
    md += ["### Versions", ""] + [f"- {k}: {v}" for k, v in report["versions"].items()]
    if report["notes"]:
        md += ["", "### Notes", ""] + [f"- {n}" for n in report["notes"]]
    paths[1].write_text("\n".join(md) + "\n")
    try:
        paths.append(plots.bpb_bars(rows, out / f"{stem}-bpb.png", f"Bits per byte, {stem}"))
        paths.append(plots.pareto(rows, out / f"{stem}-pareto.png", f"Speed vs ratio, {stem}"))
    except ImportError:
        log("compare: matplotlib not installed, no plots")
    return paths


def probe(comp: cz.Compressor, src: Path, tmp: Path, notes: list[str]) -> bool:
    """Round-trip the first 1000 bytes once; a compressor that cannot is skipped with a note.

    lmzip may be installed but not usable (no default model, compress not implemented yet): that
    is a skip, not a FAILED row. A mismatch on the real files still shows as FAILED.
    """
    sample = tmp / "probe.txt"
    with open(src, "rb") as f:
        sample.write_bytes(f.read(1000))
    row = cz.measure(comp, sample, "probe", tmp, runs=1)
    sample.unlink()
    if not row.ok:
        notes.append(f"{comp.name}: skipped, probe on 1000 bytes: {row.status}")
        log(f"compare: note: {notes[-1]}")
    return row.ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = args.files or [CORPORA / name for name in DEV_SETS]
    missing_files = [str(f) for f in files if not f.is_file()]
    if missing_files:
        log(f"compare: no such file: {', '.join(missing_files)}")
        return 2

    comps, notes = cz.classical()
    model_path = args.lmzip_model
    if not args.no_lmzip:
        lm, lm_notes = cz.lmzip_compressors(model_path)
        if args.no_lm_only:
            lm = [c for c in lm if c.name != "lmzip --lm-only"]
        comps += lm
        notes += lm_notes
        model_path = model_path or cz.default_model_path()
        if lm and model_path is None:
            notes.append("lmzip: model container not found; amortized bpb not computed")
    comps = cz.with_versions(comps)
    for n in notes:
        log(f"compare: note: {n}")

    rows: list[Row] = []
    # Speeds on a shared machine are only as good as its load: record it at both ends.
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lmzip-bench-") as tmp:
        inputs = prepare_files(files, Path(tmp), args.quick)
        comps = [c for c in comps if c.impl != "lmzip" or probe(c, inputs[0][1], Path(tmp), notes)]
        total = len(inputs) * len(comps)
        for label, path in inputs:
            for comp in comps:
                log(f"[{len(rows) + 1}/{total}] {comp.name} on {label} ({path.stat().st_size:,} B)")
                runs = args.lmzip_runs if comp.impl == "lmzip" and args.lmzip_runs else args.runs
                row = cz.measure(comp, path, label, Path(tmp), runs)
                rows.append(row)
                if row.ok:
                    log(f"    {row.bpb:.3f} bpb, compress {_fmt_speed(row.compress_kbps)} KB/s, "
                        f"decompress {_fmt_speed(row.decompress_kbps)} KB/s")  # fmt: skip
                else:
                    log(f"    {row.status}")
        file_info = [
            {"file": lb, "bytes": p.stat().st_size, "sha256": sha256(p)} for lb, p in inputs
        ]

    lm_rows = [c.name for c in comps if c.impl == "lmzip"]
    model_bytes = model_path.stat().st_size if lm_rows and model_path else 0
    date = datetime.date.today().isoformat()
    report = {
        "date": date,
        "command": shlex.join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])]),
        "runs": args.runs,
        "lmzip_runs": args.lmzip_runs or args.runs,
        "quick": args.quick,
        "machine": machine_info() | {"load_1min": [load_start, os.getloadavg()[0]]},
        "git_commit": git_commit(),
        "rss_method": cz.rss_method(),
        "versions": {c.name: c.version or c.impl for c in comps},
        "files": file_info,
        "lmzip": {
            "rows": lm_rows,
            "model_path": str(model_path) if lm_rows and model_path else None,
            "model_bytes": model_bytes,
            "amortized_bpb": {
                c: total_bpb([r for r in rows if r.compressor == c], model_bytes) for c in lm_rows
            },
        },
        "notes": notes,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    ref_md = "" if args.quick else reference_table(rows, reference_bpb(CORPORA / "README.md"))
    stem = f"{args.stem}-{date}" + ("-quick" if args.quick else "")
    paths = write_results(report, rows, args.out, stem, ref_md)
    print(markdown_tables(rows, {c: model_bytes for c in lm_rows}))
    for p in paths:
        log(f"compare: wrote {p}")
    return 1 if any(r.status.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
