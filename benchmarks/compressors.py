"""Compressors the benchmark runs, and how one (compressor, file) pair is measured.

Every compressor is a pair of external commands (compress, decompress) so that time and peak
memory are measured the same way for all of them: wall time around the child process and
ru_maxrss of that child alone (os.wait4), never of this Python process.

Run as a script only as the pyppmd helper: `python compressors.py ppmd c|d ORDER MEM IN OUT`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

KB = 1000  # speeds are in KB/s of original text, 1 KB = 1000 bytes


@dataclasses.dataclass(frozen=True)
class Step:
    """One child process: argv, run in cwd, stdout sent to a file or discarded."""

    argv: list[str]
    cwd: Path | None = None
    stdout: Path | None = None


@dataclasses.dataclass(frozen=True)
class Compressor:
    """A named compressor: command builders plus where it comes from.

    compress(src, archive) and decompress(archive, out) return the Step to run; both get absolute
    paths. `impl` names the program that actually ran (7zz, pyppmd, ...) for the results file.
    """

    name: str
    impl: str
    compress: Callable[[Path, Path], Step]
    decompress: Callable[[Path, Path], Step]
    version_argv: list[str] | None = None
    version: str = ""


@dataclasses.dataclass
class Row:
    """One (compressor, file) measurement; the unit of the JSON results."""

    compressor: str
    impl: str
    file: str
    original_bytes: int
    compressed_bytes: int | None = None
    bpb: float | None = None
    compress_kbps: float | None = None
    decompress_kbps: float | None = None
    compress_s: list[float] = dataclasses.field(default_factory=list)
    decompress_s: list[float] = dataclasses.field(default_factory=list)
    compress_rss_mb: float | None = None
    decompress_rss_mb: float | None = None
    roundtrip_ok: bool | None = None
    status: str = "ok"  # "ok", "FAILED: <why>", or "missing: <why>"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bpb(compressed_bytes: int, original_bytes: int) -> float:
    """Bits per byte of original text, the project's headline number."""
    if original_bytes <= 0:
        raise ValueError("original_bytes must be positive")
    return 8.0 * compressed_bytes / original_bytes


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def kbps(nbytes: int, seconds: float) -> float:
    # Both directions are reported per byte of original text, as zstd/lzbench do, so compress
    # and decompress speeds read on the same scale.
    return nbytes / KB / max(seconds, 1e-9)


GNU_TIME = "/usr/bin/time"


def rss_method() -> str:
    """How peak memory is measured; recorded in the results."""
    if os.access(GNU_TIME, os.X_OK):
        return "GNU time %M of the compressor process"
    return "wait4 ru_maxrss: includes the harness's own RSS as a floor (install `time`)"


def run_step(step: Step) -> tuple[float, float, int, str]:
    """Run one child; return (wall seconds, peak RSS in MB, exit code, last stderr line).

    Peak RSS comes from GNU time when installed: a child forked or vforked straight from this
    Python process inherits its high-water mark (Linux carries it across exec), so wait4 alone
    would report at least the harness's own ~30 MB; GNU time forks from a ~1 MB process.
    """
    use_time = os.access(GNU_TIME, os.X_OK)
    fd, rss_file = tempfile.mkstemp(prefix="lmzip-bench-rss-")
    os.close(fd)
    err_file = rss_file + ".err"
    argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *step.argv] if use_time else step.argv
    try:
        with contextlib.ExitStack() as stack:
            out = (
                stack.enter_context(open(step.stdout, "wb")) if step.stdout else subprocess.DEVNULL
            )
            # stderr to a file, not a pipe: nothing reads a pipe while wait4 blocks.
            err = stack.enter_context(open(err_file, "wb"))
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, cwd=step.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err,
            )  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
            seconds = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
        rss_kib = usage.ru_maxrss  # KiB on Linux
        if use_time:
            # The last line is %M; a "Command exited with non-zero status" line may precede it.
            lines = Path(rss_file).read_text().split()
            rss_kib = int(lines[-1]) if lines and lines[-1].isdigit() else rss_kib
        err_lines = Path(err_file).read_text(errors="replace").strip().splitlines()
    finally:
        for f in (rss_file, err_file):
            if os.path.exists(f):
                os.unlink(f)
    return seconds, rss_kib / 1024.0, proc.returncode, err_lines[-1][:200] if err_lines else ""


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _same_file(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def measure(comp: Compressor, src: Path, label: str, workdir: Path, runs: int) -> Row:
    """Compress and decompress src `runs` times; any failure flags the row instead of raising."""
    src = src.resolve()
    workdir = workdir.resolve()
    row = Row(comp.name, comp.impl, label, src.stat().st_size)
    slug = "".join(c if c.isalnum() else "_" for c in comp.name)
    archive = workdir / f"{label}.{slug}.cmp"
    restored = workdir / f"{label}.{slug}.out"
    sizes = set()
    c_rss, d_rss = [], []
    try:
        for _ in range(runs):
            # Stale outputs would be appended to (7z, zpaq) or hide a failed run.
            _remove(archive)
            _remove(restored)
            seconds, rss, rc, err = run_step(comp.compress(src, archive))
            if rc != 0 or not archive.is_file():
                row.status = f"FAILED: compress exit {rc}" + (f": {err}" if err else "")
                return row
            row.compress_s.append(seconds)
            c_rss.append(rss)
            sizes.add(archive.stat().st_size)
            seconds, rss, rc, err = run_step(comp.decompress(archive, restored))
            if rc != 0:
                row.status = f"FAILED: decompress exit {rc}" + (f": {err}" if err else "")
                return row
            row.decompress_s.append(seconds)
            d_rss.append(rss)
            row.roundtrip_ok = _same_file(src, restored)
            if not row.roundtrip_ok:
                row.status = "FAILED: decompressed output differs from the original"
                return row
    except OSError as exc:  # e.g. the program vanished between detection and use
        row.status = f"FAILED: {exc}"
        return row
    finally:
        _remove(archive)
        _remove(restored)
        if row.compress_s:
            row.compressed_bytes = max(sizes)
            row.bpb = bpb(row.compressed_bytes, row.original_bytes)
            row.compress_kbps = kbps(row.original_bytes, median(row.compress_s))
            row.compress_rss_mb = max(c_rss)
        if row.decompress_s:
            row.decompress_kbps = kbps(row.original_bytes, median(row.decompress_s))
            row.decompress_rss_mb = max(d_rss)
    if len(sizes) > 1:
        row.status = f"FAILED: compressed size differs between runs {sorted(sizes)}"
    return row


def tool_version(argv: list[str]) -> str:
    """First non-empty output line of a version command ('' if it cannot run)."""
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        if line.strip():
            return line.strip().strip("* ")
    return ""


# -- the classical compressors --------------------------------------------------------------

PPMD_ORDER = 32  # 7-Zip -mx=9 for PPMd: order 32, memory 192 MiB
PPMD_MEM = 192 << 20


def ppmd_mem_like_7zip(size: int, mem: int = PPMD_MEM) -> int:
    """The model memory 7-Zip really uses: it shrinks mem to the smallest 2^i >= 16 x file size.

    Mirrors CPP/7zip/Compress/PpmdEncoder.cpp (kMult = 16). On lee_news this gives 8 MiB, and
    PPMd then restarts its model when memory fills: that is why 7z scores ~0.14 bpb worse than
    PPMd with the full 192 MiB on these small files.
    """
    for i in range(16, 32):
        if size <= (1 << i) // 16:
            return min(mem, 1 << i)
    return mem


def _stdout_cmd(argv: list[str]) -> Callable[[Path, Path], Step]:
    return lambda src, dst: Step([*argv, str(src)], stdout=dst)


def _pyppmd(mem: int | None) -> Compressor:
    """PPMd var. H through pyppmd in a child process; mem=None mimics 7-Zip's reduction."""
    helper = str(Path(__file__).resolve())

    def comp(src: Path, dst: Path) -> Step:
        m = ppmd_mem_like_7zip(src.stat().st_size) if mem is None else mem
        return Step(
            [sys.executable, helper, "ppmd", "c", str(PPMD_ORDER), str(m), str(src), str(dst)]
        )

    def decomp(src: Path, dst: Path) -> Step:
        return Step([sys.executable, helper, "ppmd", "d", "0", "0", str(src), str(dst)])

    name = "7z PPMd -mx9" if mem is None else "PPMd o32 192M"
    return Compressor(name, "pyppmd", comp, decomp)


def classical() -> tuple[list[Compressor], list[str]]:
    """The compressors of shared/corpora/README.md that are installed, and notes on the rest."""
    found: list[Compressor] = []
    missing: list[str] = []

    def add(binary: str, comp: Compressor) -> None:
        if shutil.which(binary):
            found.append(comp)
        else:
            missing.append(f"{comp.name}: `{binary}` not installed (run benchmarks/setup.sh)")

    add("zstd", Compressor(
        "zstd -19", "zstd",
        lambda s, d: Step(["zstd", "-19", "-q", "-f", "-o", str(d), str(s)]),
        lambda s, d: Step(["zstd", "-d", "-q", "-f", "-o", str(d), str(s)]),
        ["zstd", "--version"],
    ))  # fmt: skip
    add("xz", Compressor(
        "xz -9e", "xz", _stdout_cmd(["xz", "-9e", "-c"]), _stdout_cmd(["xz", "-d", "-c"]),
        ["xz", "--version"],
    ))  # fmt: skip
    add("brotli", Compressor(
        "brotli -q11 -w24", "brotli",
        lambda s, d: Step(["brotli", "-q", "11", "-w", "24", "-f", "-o", str(d), str(s)]),
        lambda s, d: Step(["brotli", "-d", "-f", "-o", str(d), str(s)]),
        ["brotli", "--version"],
    ))  # fmt: skip
    add("bzip2", Compressor(
        "bzip2 -9", "bzip2", _stdout_cmd(["bzip2", "-9", "-c"]), _stdout_cmd(["bzip2", "-d", "-c"]),
        ["bzip2", "--help"],
    ))  # fmt: skip

    # 7zz is 7-Zip itself (Debian `7zip`), 7z the p7zip wrapper; both take the same switches.
    seven = next((b for b in ("7zz", "7z") if shutil.which(b)), None)
    if seven:
        # cwd = the file's folder so the archive stores a bare name, as a user's `7z a` would.
        found.append(Compressor(
            "7z PPMd -mx9", seven,
            lambda s, d: Step([seven, "a", "-m0=PPMd", "-mx=9", "-bd", "-bso0", "-bsp0", str(d),
                               s.name], cwd=s.parent),
            lambda s, d: Step([seven, "e", "-so", str(s)], stdout=d),
            [seven],
        ))  # fmt: skip
    elif _has_pyppmd():
        found.append(_pyppmd(mem=None))
        missing.append("7z PPMd -mx9: no 7z/7zz, measured with pyppmd using 7-Zip's settings")
    else:
        missing.append("7z PPMd -mx9: neither 7zz/7z nor pyppmd installed")

    add("zpaq", Compressor(
        "zpaq -m5", "zpaq",
        # -to stores the file under a fixed name, so extracting needs no knowledge of the source
        # path; on extraction -to maps that name to the output path.
        lambda s, d: Step(["zpaq", "a", str(d), str(s), "-to", "data", "-m5"]),
        lambda s, d: Step(["zpaq", "x", str(s), "data", "-to", str(d), "-force"]),
        ["zpaq"],
    ))  # fmt: skip
    if _has_pyppmd():
        # Not in the README table: PPMd with the memory 7z -mx9 names but does not use on small
        # files. The stronger, fairer PPMd bar.
        found.append(_pyppmd(mem=PPMD_MEM))
    else:
        missing.append("PPMd o32 192M: pyppmd not installed")
    return found, missing


def _has_pyppmd() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyppmd") is not None


def with_versions(comps: list[Compressor]) -> list[Compressor]:
    out = []
    for c in comps:
        if c.impl == "pyppmd":
            from importlib.metadata import version

            v = f"pyppmd {version('pyppmd')}"
        else:
            v = tool_version(c.version_argv) if c.version_argv else ""
        out.append(dataclasses.replace(c, version=v))
    return out


# -- lmzip ----------------------------------------------------------------------------------


def _help(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout + res.stderr if res.returncode == 0 else ""


def lmzip_compressors(model: Path | None) -> tuple[list[Compressor], list[str]]:
    """lmzip as a compressor (and `--lm-only` when the CLI has it); notes say what was skipped."""
    exe = shutil.which("lmzip")
    if not exe:
        return [], ["lmzip: `lmzip` not on PATH (pip install -e .)"]
    c_help = _help([exe, "compress", "--help"])
    if not c_help:
        return [], ["lmzip: `lmzip compress --help` failed"]
    d_help = _help([exe, "decompress", "--help"])
    c_model = ["--model", str(model)] if model and "--model" in c_help else []
    d_model = ["--model", str(model)] if model and "--model" in d_help else []
    notes = []
    if model and not c_model:
        notes.append("lmzip: CLI has no --model option; --lmzip-model ignored")

    def build(extra: list[str]) -> Callable[[Path, Path], Step]:
        return lambda s, d: Step(
            [exe, "compress", "-f", "-q", *extra, *c_model, "-o", str(d), str(s)]
        )

    def decomp(s: Path, d: Path) -> Step:
        return Step([exe, "decompress", "-f", "-q", *d_model, "-o", str(d), str(s)])

    comps = [Compressor("lmzip", "lmzip", build([]), decomp, [exe, "--version"])]
    if "--lm-only" in c_help:
        comps.append(Compressor("lmzip --lm-only", "lmzip", build(["--lm-only"]), decomp,
                                [exe, "--version"]))  # fmt: skip
    else:
        notes.append("lmzip --lm-only: the CLI has no such flag")
    return comps, notes


def default_model_path() -> Path | None:
    """The model container lmzip ships (lmzip/models/*.lmzm), found without importing lmzip."""
    import importlib.util

    spec = importlib.util.find_spec("lmzip")
    if not spec or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        models = sorted(Path(loc, "models").glob("*.lmzm"))
        default = [m for m in models if m.stem == "default"]
        if default or len(models) == 1:
            return (default or models)[0]
    return None


# -- pyppmd helper process ------------------------------------------------------------------


def _ppmd_main(argv: list[str]) -> int:
    """`ppmd c ORDER MEM IN OUT` / `ppmd d 0 0 IN OUT`: raw PPMd7 stream behind a 16-byte header.

    The header (original length, order, mem; little endian) lets the decoder rebuild the same
    model; the stream alone does not say where it ends.
    """
    import pyppmd

    mode, order, mem, src, dst = argv[0], int(argv[1]), int(argv[2]), argv[3], argv[4]
    data = Path(src).read_bytes()
    if mode == "c":
        enc = pyppmd.Ppmd7Encoder(order, mem)
        body = enc.encode(data) + enc.flush()
        head = len(data).to_bytes(8, "little") + order.to_bytes(4, "little")
        Path(dst).write_bytes(head + (mem >> 16).to_bytes(4, "little") + body)
    else:
        n = int.from_bytes(data[:8], "little")
        order = int.from_bytes(data[8:12], "little")
        mem = int.from_bytes(data[12:16], "little") << 16
        Path(dst).write_bytes(pyppmd.Ppmd7Decoder(order, mem).decode(data[16:], n))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "ppmd":
        sys.exit(_ppmd_main(sys.argv[2:]))
    sys.exit("usage: compressors.py ppmd c|d ORDER MEM IN OUT")
