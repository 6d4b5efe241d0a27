"""Fast tests of the benchmark harness's pure parts (benchmarks/*.py); no real compressor runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, imported the way `python benchmarks/compare.py` sees them."""
    sys.path.insert(0, str(BENCH))
    try:
        import compare
        import compressors

        yield compressors, compare
    finally:
        sys.path.remove(str(BENCH))


def _row(cz, comp, file, orig, comp_bytes, c=1000.0, d=2000.0, status="ok"):
    r = cz.Row(comp, comp, file, orig, comp_bytes, cz.bpb(comp_bytes, orig), c, d)
    r.compress_rss_mb, r.decompress_rss_mb, r.status = 10.0, 5.0, status
    return r


def test_bpb_and_median(bench):
    cz, _ = bench
    assert cz.bpb(1, 1) == 8.0
    assert cz.bpb(250, 1000) == 2.0
    with pytest.raises(ValueError):
        cz.bpb(1, 0)
    assert cz.median([3.0, 1.0, 2.0]) == 2.0
    assert cz.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert cz.kbps(5000, 2.0) == 2.5


def test_total_bpb_counts_model_once(bench):
    cz, compare = bench
    rows = [_row(cz, "lm", "a", 1000, 200), _row(cz, "lm", "b", 3000, 600)]
    assert compare.total_bpb(rows) == pytest.approx(8 * 800 / 4000)
    assert compare.total_bpb(rows, extra_bytes=400) == pytest.approx(8 * 1200 / 4000)
    rows[1].status = "FAILED: x"
    assert compare.total_bpb(rows) is None


def test_ppmd_memory_follows_7zip(bench):
    cz, _ = bench
    # 7-Zip shrinks the model to the smallest 2^i >= 16 x size: lee_news (359,784 B) -> 8 MiB.
    assert cz.ppmd_mem_like_7zip(359_784) == 8 << 20
    assert cz.ppmd_mem_like_7zip(1000) == 1 << 16
    assert cz.ppmd_mem_like_7zip(10**9) == cz.PPMD_MEM


def test_markdown_tables(bench):
    cz, compare = bench
    rows = [
        _row(cz, "zstd -19", "f1", 1000, 300, c=1234.5, d=99.4),
        _row(cz, "zstd -19", "f2", 1000, 100),
        _row(cz, "broken", "f1", 1000, 1, status="FAILED: decompressed output differs"),
        cz.Row("gone", "gone", "f2", 1000, status="missing: not installed"),
    ]
    md = compare.markdown_tables(rows)
    lines = md.splitlines()
    assert "| compressor | f1 | f2 | all files | all files + model |" in lines
    assert "| zstd -19 | 2.400 | 0.800 | 1.600 | 1.600 |" in lines
    assert "| broken | FAILED | - | - | - |" in lines
    assert "| gone | - | missing | - | - |" in lines
    assert "| zstd -19 | 1,234 / 99.4 | 1,000 / 2,000 | 10 / 5 |" in lines


def test_reference_table_parsing(bench, tmp_path):
    cz, compare = bench
    readme = tmp_path / "README.md"
    readme.write_text(
        "text\n\n| file | zstd -19 | xz -9e |\n|---|---|---|\n| f1 | 2.400 | 2.3 |\n"
        "| f2 | - | 1.0 |\n\nmore\n| file | other |\n|---|---|\n| f1 | 9 |\n"
    )
    ref = compare.reference_bpb(readme)
    assert ref == {("zstd -19", "f1"): 2.4, ("xz -9e", "f1"): 2.3, ("xz -9e", "f2"): 1.0}
    table = compare.reference_table([_row(cz, "zstd -19", "f1", 1000, 301)], ref)
    assert "| zstd -19 | f1 | 2.400 | 2.408 | +0.008 |" in table


def _fake(cz, name, decompress_argv):
    """A `cat` compressor whose decompress command is given, to force round-trip outcomes."""
    return cz.Compressor(
        name,
        "cat",
        lambda s, d: cz.Step(["cat", str(s)], stdout=d),
        lambda s, d: cz.Step([*decompress_argv, str(s)], stdout=d),
    )


@pytest.mark.skipif(not shutil.which("cat") or not shutil.which("head"), reason="needs coreutils")
def test_roundtrip_ok_and_flagged(bench, tmp_path):
    cz, _ = bench
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello benchmark\n" * 100)

    good = cz.measure(_fake(cz, "cat", ["cat"]), src, "in", tmp_path, runs=2)
    assert good.ok and good.roundtrip_ok
    assert good.compressed_bytes == 1600 and good.bpb == 8.0
    assert len(good.compress_s) == 2 and good.compress_kbps > 0 and good.decompress_rss_mb > 0

    # Decompression that drops bytes: the row is flagged, not raised.
    bad = cz.measure(_fake(cz, "lossy", ["head", "-c", "10"]), src, "in", tmp_path, runs=2)
    assert bad.status.startswith("FAILED") and bad.roundtrip_ok is False

    failing = cz.measure(_fake(cz, "exit1", ["false"]), src, "in", tmp_path, runs=1)
    assert failing.status == "FAILED: decompress exit 1"
    # Nothing but the input is left behind in the work dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_plots_written(bench, tmp_path):
    pytest.importorskip("matplotlib")
    cz, _ = bench
    sys.path.insert(0, str(BENCH))
    try:
        import plots
    finally:
        sys.path.remove(str(BENCH))
    rows = [
        _row(cz, c, f, 1000, n, c=s)
        for c, n, s in (("zstd -19", 300, 3000.0), ("zpaq -m5", 230, 300.0))
        for f in ("f1", "f2")
    ]
    rows.append(_row(cz, "broken", "f1", 1000, 1, status="FAILED: x"))
    for fn in (plots.bpb_bars, plots.pareto):
        out = fn(rows, tmp_path / f"{fn.__name__}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_skips_a_broken_compressor(bench, tmp_path):
    cz, compare = bench
    src = tmp_path / "in.txt"
    src.write_bytes(b"x" * 5000)
    notes: list[str] = []
    assert compare.probe(_fake(cz, "cat", ["cat"]), src, tmp_path, notes) and notes == []
    broken = cz.Compressor(
        "broken",
        "cat",
        lambda s, d: cz.Step(["sh", "-c", "echo no model >&2; exit 3"]),
        lambda s, d: cz.Step(["cat", str(s)], stdout=d),
    )
    assert not compare.probe(broken, src, tmp_path, notes)
    assert notes == ["broken: skipped, probe on 1000 bytes: FAILED: compress exit 3: no model"]


@pytest.fixture(scope="module")
def bench_engine():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_engine

        yield bench_engine
    finally:
        sys.path.remove(str(BENCH))


def test_engine_step_positions_average_the_window(bench_engine):
    for quick in (True, False):
        pos = bench_engine.step_positions(1024, quick)
        assert sum(pos) / len(pos) == pytest.approx(512, abs=1)
        assert all(0 < p < 1024 for p in pos)


def test_engine_stages_are_exclusive(bench_engine):
    st = bench_engine.Stages()
    with st("outer"):
        with st("inner"):
            sum(range(200_000))
    assert st.calls == {"outer": 1, "inner": 1}
    assert st.time["inner"] > 0 and st.time["outer"] >= 0


def test_engine_linear_shapes_and_limit(bench_engine):
    from lmzip.model import ModelConfig

    cfg = ModelConfig(**{**ModelConfig().to_dict(), **bench_engine.MODELS["cpu"]})
    shapes = bench_engine.linear_shapes(cfg)
    assert ("head", 1, 256, 1024) in shapes and ("mlp.up", 6, 256, 768) in shapes
    t = bench_engine.kernel_times(4, 64, 32, 31, runs=1)
    assert "f32" in t and "i16" in t and all(v > 0 for v in t.values())
