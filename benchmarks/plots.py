"""The two benchmark plots: grouped bpb bars, and compress speed against bpb (Pareto view).

matplotlib is imported inside the functions, with the Agg backend, so importing this module costs
nothing and works on a machine without a display or without matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compressors import Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _order(rows: list[Row]) -> tuple[list[str], list[str]]:
    """Compressors and files in first-seen order, keeping the table's order in the plots."""
    comps = list(dict.fromkeys(r.compressor for r in rows))
    files = list(dict.fromkeys(r.file for r in rows))
    return comps, files


def bpb_bars(rows: list[Row], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per compressor, one bar per file; failed rows are left out."""
    plt = _pyplot()
    comps, files = _order(rows)
    by = {(r.compressor, r.file): r.bpb for r in rows if r.ok and r.bpb is not None}
    width = 0.8 / max(len(files), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(comps) + 2), 4.8), layout="constrained")
    for j, f in enumerate(files):
        xs = [i + (j - (len(files) - 1) / 2) * width for i in range(len(comps))]
        ys = [by.get((c, f), float("nan")) for c in comps]
        bars = ax.bar(xs, ys, width, label=f)
        # Values on the bars: the differences that matter are a few hundredths of a bit.
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1, rotation=90)
    ax.set_xticks(range(len(comps)), comps, rotation=20, ha="right")
    ax.set_ylabel("bits per byte (8 x compressed / original), lower is better")
    ax.set_title(title or "Compression ratio per file")
    top = max((v for v in by.values()), default=8.0)
    ax.set_ylim(0, top * 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="file", fontsize=8, loc="lower left")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto(rows: list[Row], path: Path, title: str = "") -> Path:
    """Compress speed (log x) against bpb: small markers per file, a large one per compressor.

    The large marker is the byte-weighted mean over files (total compressed bits / total bytes,
    total bytes / total median time), so a compressor's position does not favour short files.
    """
    plt = _pyplot()
    comps, files = _order(rows)
    markers = "osD^vP*Xh<>"
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(comps):
        mine = [r for r in rows if r.compressor == c and r.ok and r.compress_kbps]
        if not mine:
            continue
        color = cmap(i % 10)
        for r in mine:
            m = markers[files.index(r.file) % len(markers)]
            ax.scatter(r.compress_kbps, r.bpb, s=22, color=color, marker=m, alpha=0.45)
        total = sum(r.original_bytes for r in mine)
        bits = sum(r.bpb * r.original_bytes for r in mine)
        secs = sum(r.original_bytes / 1000 / r.compress_kbps for r in mine)
        x, y = total / 1000 / secs, bits / total
        ax.scatter(x, y, s=110, color=color, edgecolor="black", zorder=3, label=c)
        # Alternate above/below so neighbours with similar speed and bpb do not overprint.
        dy = 6 if i % 2 == 0 else -13
        ax.annotate(c, (x, y), textcoords="offset points", xytext=(7, dy), fontsize=8)
    # Marker-shape key for the per-file points, drawn grey so it does not look like a compressor.
    for j, f in enumerate(files):
        ax.scatter([], [], s=22, color="grey", marker=markers[j % len(markers)], label=f"file: {f}")
    ax.set_xscale("log")
    ax.set_xlabel("compress speed, KB/s of original text (log scale, 1 KB = 1000 bytes)")
    ax.set_ylabel("bits per byte, lower is better")
    ax.set_title(title or "Speed against ratio (large marker: all files together)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
