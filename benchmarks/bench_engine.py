"""Engine benchmark: exact integer engine throughput, a coarse per-stage breakdown, and the
machine's exact-GEMM limit for the same linear shapes, measured in the same run.

Run: python benchmarks/bench_engine.py [--quick] [--models cpu,golf] [--threads 1] [--out DIR]
     [--tag v2]

For each model size (random weights of the size's shape: speed does not depend on the weights;
`default` is the shipped default model's shape, 4 x 192, `cpu` the shipped `large` model's,
6 x 256, `golf` the ModelConfig defaults, 9 x 512) and each thread count (torch and numba), on
the engine the compressor runs (lmzip.cpu_engine.CpuEngine where its kernels pass their
self-tests, else the torch engine):
(a) teacher-forced forward over full windows (1024 tokens' worth), tokens/s;
(b) incremental step of B streams in lockstep (B = 1, 16, 32), at positions W/4 and
    3W/4 (full run: W/8, 3W/8, 5W/8, 7W/8): the step cost is affine in the position, so their
    mean is the mean over the window; tokens/s = B / mean step time;
(c) where the time goes, coarsely:
    forward: one extra forward with every lmzip.rowops kernel the engine calls through the module
      (linear_i16, linear_i16_par, attend_fwd, normquant, ...), of lmzip.blocks
      (pre_attention, post_attention, head) and `_Linear.__call__` wrapped by exclusive timers
      (checked to give the same logits); stages are grouped into linears (the linear kernels
      and `_Linear.__call__`'s glue), attention (attend_fwd), blocks (the CPU engine's passes
      fuse their linears and row kernels into lmzip.blocks' compiled calls) and the rest;
    step: `step_all` is one compiled call and cannot be wrapped, so its linears and attention
      are timed as the same numba kernels called alone at the same shapes (the step's linear,
      linear_quads where it uses it, else linear_i16, at M = B for every linear and the head;
      attend_step per layer at the position) and the rest is the measured step minus those
      (an estimate: standalone calls add a dispatch each);
(d) the machine's limit: for every linear shape at the same M (forward rows, or B), the fastest
    EXACT product of a 15-bit activation with the int8 weights among
      int_mm  two torch._int_mm (hi and lo int8 halves), only if it passes lmzip.kernels'
              exactness self-test for that shape and weight range (timed at <= 64 rows and
              scaled to M: without VNNI it is ~30x slower than f32 and flat in M),
      f32     one float32 GEMM of both halves stacked ([2M, K] x [K, N]; exact: every partial
              sum < 2^24 for these shapes), product only, no split or epilogue,
      i16     rowops.linear_i16 (the engine's fused linear: int16 x int8 products summed
              exactly in int32, vpmaddwd on AVX2, epilogue included), one thread;
    reported as GOP/s (2 M K N useful ops per linear over its time) and as minimum s/token of
    all linears (blocks and logit head); engine / min = engine s/token over that minimum
    (attention is not in the minimum: the ratio charges it to the engine).
Wall times are medians (at least 3 runs, --runs, within a time budget); CPU time (user + sys of
all threads, getrusage) and the load average are recorded, as the machine is shared.
The lmzip imported is the one Python finds (PYTHONPATH=COPY with LMZIP_COMMIT=HASH measures
another version). Results, written after each model: DIR/engine-YYYY-MM-DD[-TAG][-quick].json/.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from lmzip import cpu_env

cpu_env.prefer_512_bit_vectors()  # what the CLI sets, before numba loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name -> ModelConfig kwargs (over ModelConfig defaults)
    "default": {  # the shipped default model's shape (4 x 192)
        "vocab_size": 1024,
        "n_layer": 4,
        "d_model": 192,
        "n_head": 4,
        "n_kv_head": 2,
        "mlp_mult": 3,
        "seq_len": 512,
    },
    "cpu": {  # the shipped `large` model's shape (6 x 256)
        "vocab_size": 1024,
        "n_layer": 6,
        "d_model": 256,
        "n_head": 4,
        "n_kv_head": 2,
        "mlp_mult": 3,
        "seq_len": 512,
    },
    "golf": {},  # ModelConfig() defaults: 9 x 512, 8/4 heads, MLP 2x, vocab 1024, seq 1024
}
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")
BATCHES = (1, 16, 32)


# -- shared with bench_speed.py ----------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_info() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(flags.group(1).split()) if flags else set()
    return {
        "platform": platform.platform(),
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx": "amx_int8" in flags,
        # numba's loops in 512-bit vectors (lmzip.cpu_env, as the CLI runs them)
        "wide_vectors": cpu_env.WIDE_VECTORS in os.environ.get("NUMBA_CPU_FEATURES", ""),
        # the passes' linears and attention in AMX tiles (self-tests passed here)
        "amx_tiles": _amx_tiles(),
    }


def _amx_tiles() -> bool:
    from lmzip import cpu_engine

    return cpu_engine.tiles_linear_ok() and cpu_engine.tiles_attention_ok()


def versions() -> dict:
    import numba

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


def git_commit() -> str:
    """Commit of the lmzip package imported (a plain copy: the LMZIP_COMMIT it was made from)."""
    import lmzip

    root = Path(lmzip.__file__).resolve().parents[1]
    if os.environ.get("LMZIP_COMMIT"):
        return f"{os.environ['LMZIP_COMMIT']} (copy at {root})"

    def git(*args):
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "lmzip")
    return head + (" + uncommitted lmzip changes" if dirty else "")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tokenizer_bytes() -> bytes:
    """The tokenizer inside the package's default model (read only: building its engine here
    would time the kernel choice for the cpu shapes before the thread count is set)."""
    from lmzip import container

    return container.load_model(str(container.default_model_path())).tokenizer


def model_file(name: str, seed: int = 0):
    """A random-weight ModelFile of size `name` (tests/conftest.py's builder)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from conftest import random_model_file
    finally:
        sys.path.pop(0)
    from lmzip.model import ModelConfig

    # every field explicit: the builder's own defaults are a tiny test model
    cfg = {**ModelConfig().to_dict(), **MODELS[name]}
    return random_model_file(tokenizer_bytes(), seed=seed, **cfg)


def _rusage() -> tuple[float, float]:
    """(user + sys, sys) CPU seconds of this process, all threads (microsecond resolution)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


def timed(fn, runs: int, budget: float) -> dict:
    """Median wall and CPU (user + sys, all threads) seconds of `runs` calls of fn(); stops
    after 3 calls once `budget` seconds are spent (the machine is shared: slow runs are kept)."""
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < runs:
        c0, w0 = _rusage()[0], time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(_rusage()[0] - c0)
        if len(walls) >= 3 and time.perf_counter() - start > budget:
            break
    med = statistics.median
    return {"wall_s": med(walls), "cpu_s": med(cpus), "runs": len(walls), "walls": walls}


def per_call(fn, runs: int, min_s: float = 0.02) -> float:
    """Median CPU seconds (this process, all threads) per call of a fast fn(): `runs` samples
    of a loop of >= min_s. CPU, not wall: on the shared machine wall time counts waits for a
    core; with 1 thread CPU time is the time on an idle core."""
    fn()
    reps = 1
    while True:
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        if time.process_time() - t0 > min_s:
            break
        reps *= 4
    samples = []
    for _ in range(runs):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        samples.append((time.process_time() - t0) / reps)
    return statistics.median(samples)


def set_threads(n: int) -> None:
    import numba

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


# -- (a) + (b): throughput ---------------------------------------------------------------------
def step_positions(window: int, quick: bool) -> list[int]:
    """Midpoints of equal parts of the window: their mean step time is the window mean."""
    parts = 2 if quick else 4
    return [int((2 * j + 1) * window / (2 * parts)) for j in range(parts)]


def step_throughput(eng, b: int, positions: list[int], runs: int, budget: float) -> dict:
    g = torch.Generator().manual_seed(2)
    state = eng.new_state(b)
    tok = torch.randint(0, eng.vocab_size, (b,), generator=g)
    per_pos = {}
    for p in positions:
        pos = torch.full((b,), p, dtype=torch.int64)
        eng.step(state, tok, pos)  # warm-up (and a realistic cache write)
        r = timed(lambda pos=pos: eng.step(state, tok, pos), max(runs, 5), budget / len(positions))
        per_pos[p] = r
    wall = statistics.mean(r["wall_s"] for r in per_pos.values())
    cpu = statistics.mean(r["cpu_s"] for r in per_pos.values())
    return {
        "B": b,
        "positions": positions,
        "wall_s_per_step": wall,
        "cpu_s_per_step": cpu,
        "tok_s": b / wall,
        "runs": min(r["runs"] for r in per_pos.values()),
        "wall_s_by_position": {p: r["wall_s"] for p, r in per_pos.items()},
    }


def forward_throughput(eng, win: torch.Tensor, runs: int, budget: float) -> tuple[dict, torch.Tensor]:
    ref = eng.forward(win)  # warm-up (numba dispatch, allocations)
    r = timed(lambda: eng.forward(win), runs, budget)
    n = win.numel()
    r.update(tokens=n, tok_s=n / r["wall_s"])
    return r, ref


# -- (c): where the time goes ------------------------------------------------------------------
class Stages:
    """Exclusive CPU time (this process) per stage: nested stages are subtracted from their
    parent."""

    def __init__(self):
        self.time = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack: list[float] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.process_time()
        self._stack.append(0.0)
        try:
            yield
        finally:
            dt = time.process_time() - t0
            self.time[name] += dt - self._stack.pop()
            self.calls[name] += 1
            if self._stack:
                self._stack[-1] += dt

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return wrapped


# stage -> group; `_Linear.__call__` exclusive time is its GEMM (torch) and glue
GROUPS = {
    "_Linear.__call__ (GEMM + glue)": "linears",
    "rowops.linear_i16": "linears",
    "rowops.linear_i16_par": "linears",
    "rowops.linear_pairs": "linears",
    "rowops.linear_pairs_par": "linears",
    "rowops.linear_tiles": "linears",
    "rowops.linear_tiles_par": "linears",
    "rowops.rescale": "linears",
    "rowops.attend_fwd": "attention",
    "rowops.attend_fwd_tiles": "attention",
    "rowops.att_probs": "attention",
    "rowops.attend_step": "attention",
}
# lmzip.blocks: a pass's linears and row kernels between two attentions, fused over blocks of
# rows (one compiled call each, so their parts cannot be timed apart)
GROUPS.update({f"blocks.{f}{p}": "blocks" for f in ("pre_attention", "post_attention", "head")
               for p in ("", "_par")})  # fmt: skip


@contextlib.contextmanager
def instrumented(st: Stages):
    """Wrap `_Linear.__call__` and every numba kernel of lmzip.rowops and lmzip.blocks (the
    engines and lmzip.numerics call them through the modules) with stage timers; restore them
    after."""
    import lmzip.engine as E
    from lmzip import blocks, rowops

    targets = [(E._Linear, "__call__", "_Linear.__call__ (GEMM + glue)")]
    for mod, prefix in ((rowops, "rowops"), (blocks, "blocks")):
        for attr, v in list(vars(mod).items()):
            if not attr.startswith("_") and hasattr(v, "py_func"):
                targets.append((mod, attr, f"{prefix}.{attr}"))
    saved = []
    for obj, attr, name in targets:
        raw = obj.__dict__[attr]
        saved.append((obj, attr, raw))
        setattr(obj, attr, st.wrap(name, raw))
    try:
        yield
    finally:
        for obj, attr, raw in reversed(saved):
            setattr(obj, attr, raw)


def forward_breakdown(eng, win: torch.Tensor, ref: torch.Tensor, runs: int) -> dict:
    """Exclusive seconds per stage of instrumented forwards (median per stage), grouped."""
    samples = []
    for _ in range(runs):
        st = Stages()
        with instrumented(st), st("total"):
            out = eng.forward(win)
        if not torch.equal(out, ref):
            raise RuntimeError("instrumented forward differs from the plain one")
        d = dict(st.time)
        d["rest (glue: numpy or torch ops, python)"] = d.pop("total")
        samples.append(d)
    stages = {k: statistics.median(d.get(k, 0.0) for d in samples) for k in samples[0]}
    total = sum(stages.values())
    groups = defaultdict(float)
    for k, v in stages.items():
        groups[GROUPS.get(k, "rest")] += v
    return {
        "method": "wrapped kernels, one forward per run",
        "runs": runs,
        "total_s": total,
        "groups_s": dict(groups),
        "stages_s": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
    }


def step_breakdown(eng, b: int, p: int, step_s: float, runs: int) -> dict:
    """Linears and attention of one step (B streams at position p) timed as the same numba
    kernels called alone; the rest is the measured step time minus those."""
    from lmzip import rowops

    g = np.random.default_rng(7)
    lin_s = 0.0
    by = {}
    quads = eng._stacked is not None and eng._stacked[1][-1]  # the step's linears: linear_quads

    def linear(w, ws, shift):
        a = g.integers(-16383, 16384, (b, w.shape[1])).astype(np.int64)
        s = g.integers(1 << 20, 1 << 22, b).astype(np.int64)
        if quads:
            wq, wsum = rowops.quad_cols(w)
            return per_call(lambda: rowops.linear_quads(a, wq, wsum, s, ws, shift, -(1 << 40),
                                                        1 << 40), runs)  # fmt: skip
        return per_call(lambda: rowops.linear_i16(a, w, s, ws, shift, -(1 << 40), 1 << 40), runs)

    for name in LINEARS:
        lay = eng.layers[0]
        by[name] = linear(lay[name].w_rows, lay[name].ws_np, 20) * len(eng.layers)
        lin_s += by[name]
    by["head"] = linear(eng.emb.w_rows, eng.emb.ws_np, 16)
    lin_s += by["head"]
    state = eng.new_state(b)
    kc = state.k[0].numpy()
    vc = state.v[0].numpy()
    kc[:] = g.integers(-127, 128, kc.shape)
    vc[:] = g.integers(-(1 << 20), 1 << 20, vc.shape)
    q = g.integers(-127, 128, (b, eng.h, eng.e)).astype(np.int8)
    pos = np.full(b, p, np.int64)
    gain = eng.layers[0]["gain"].numpy()
    att1 = per_call(lambda: rowops.attend_step(q, kc, vc, pos, gain, eng.att_np), runs)
    att_s = att1 * len(eng.layers)
    return {
        "method": "standalone numba kernels at the same shapes; rest = step - those",
        "B": b,
        "position": p,
        "total_s": step_s,
        "groups_s": {"linears": lin_s, "attention": att_s, "rest": step_s - lin_s - att_s},
        "linears_s": by,
    }


# -- (d): the exact-GEMM limit -----------------------------------------------------------------
def linear_shapes(cfg) -> list[tuple[str, int, int, int]]:
    """(name, count, K, N) of every integer matmul per token: blocks and the tied logit head."""
    d, e = cfg.d_model, cfg.head_dim
    per = {
        "attn.q": (d, cfg.n_head * e),
        "attn.k": (d, cfg.n_kv_head * e),
        "attn.v": (d, cfg.n_kv_head * e),
        "attn.o": (cfg.n_head * e, d),
        "mlp.up": (d, cfg.mlp_hidden),
        "mlp.down": (cfg.mlp_hidden, d),
    }
    out = [(n, cfg.n_layer, k, nn) for n, (k, nn) in per.items()]
    return out + [("head", 1, d, cfg.vocab_size)]


def kernel_times(m: int, k: int, n: int, wmax: int, runs: int) -> dict:
    """Seconds of one exact [m, K] (15-bit) x [K, N] (int8, |w| <= wmax) product per kernel."""
    from lmzip import kernels, rowops

    g = torch.Generator().manual_seed(4)
    a = torch.randint(-16383, 16384, (m, k), generator=g, dtype=torch.int64)
    w = torch.randint(-wmax, wmax + 1, (n, k), generator=g, dtype=torch.int8)
    out = {}
    if kernels.kernel_ok("int_mm", k, n, wmax, "cpu"):
        # at most 64 rows, scaled to m: without VNNI it runs at ~1 GOP/s, and a timing at
        # M = 1024 would take minutes (its rate is flat in M there)
        mi = min(m, 64)
        hi, lo = (a[:mi] >> 7).to(torch.int8), (a[:mi] & 127).to(torch.int8)
        wt = w.t().contiguous()
        t = per_call(lambda: (torch._int_mm(hi, wt), torch._int_mm(lo, wt)), runs)
        out["int_mm"] = t * m / mi
    if k * 128 * wmax < (1 << 24):  # every float32 partial sum exact
        both = torch.cat([a >> 7, a & 127]).float()  # [2M, K]: the hi rows, then the lo rows
        wf = w.t().float().contiguous()
        out["f32"] = per_call(lambda: both @ wf, runs)
    if k * 16383 * wmax < (1 << 31):  # the engine's fused linear (exact int32 sums)
        an, wn = a.numpy(), w.numpy()
        s = np.full(m, 1 << 20, np.int64)
        ws = np.full(n, 1 << 20, np.int64)
        out["i16"] = per_call(lambda: rowops.linear_i16(an, wn, s, ws, 20, -(1 << 40), 1 << 40), runs)
    return out


def gemm_limit(cfg, wmax: dict, m: int, runs: int) -> dict:
    """Per kernel and best-of: seconds per token of all linears at M = m rows, and GOP/s."""
    per_shape = {}
    ops = 0
    sec = defaultdict(float)  # kernel -> s/token (only kernels available for every shape)
    best = 0.0
    for name, count, k, n in linear_shapes(cfg):
        t = kernel_times(m, k, n, wmax[name], runs)
        fast = min(t, key=t.get)
        per_shape[name] = {
            "K": k,
            "N": n,
            "count": count,
            "gops": {kk: 2 * m * k * n / v / 1e9 for kk, v in t.items()},
            "best": fast,
        }
        for kk, v in t.items():
            sec[kk] += count * v / m
        best += count * t[fast] / m
        ops += count * 2 * k * n
    n_shapes = len(per_shape)
    full = {kk for kk in sec if all(kk in s["gops"] for s in per_shape.values())}
    return {
        "M": m,
        "ops_per_token": ops,
        "min_s_per_token": best,
        "gops": ops / best / 1e9,
        "by_kernel_gops": {kk: ops / sec[kk] / 1e9 for kk in sorted(full)},
        "by_shape": per_shape,
        "shapes": n_shapes,
    }


class CpuForward:
    """lmzip.cpu_engine.CpuEngine (what the compressor runs on CPU) behind the torch engine's
    forward / new_state / step calls that the timers make."""

    def __init__(self, cpu):
        self.cpu, self.window, self.vocab_size = cpu, cpu.window, cpu.vocab_size

    def forward(self, win: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.cpu.forward_np(win.numpy()))

    def new_state(self, b: int):
        return self.cpu.new_state(b)

    def step(self, state, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.cpu.step_np(state, tok.numpy(), pos.numpy()))


# -- the run -----------------------------------------------------------------------------------
def bench_model(name: str, args) -> dict:
    from lmzip.cpu_engine import CpuEngine, build_tables
    from lmzip.engine import Engine
    from lmzip.model import ModelConfig

    cfg = ModelConfig(**{**ModelConfig().to_dict(), **MODELS[name]})
    t0 = time.perf_counter()
    mf = model_file(name)
    set_threads(args.threads[0])  # the kernel choice times products at this thread count
    eng = Engine(mf)
    tables = build_tables(mf)
    # the timed paths: the torch-free CPU engine where it applies (as `lmzip compress` does)
    run = CpuForward(CpuEngine(tables)) if CpuEngine.supports(tables) else eng
    qmax = {"q6": 31, "q8": 127}
    wmax = {n: qmax[mf.tensors[f"blocks.0.{n}"].kind] for n in LINEARS}
    wmax["head"] = qmax[mf.tensors["tok_emb"].kind]
    if eng.fused and all(lay[n].w_rows is not None for lay in eng.layers for n in LINEARS):
        kern = ["i16"]  # rowops.linear_i16 (the fused CPU linear)
    else:
        kern = sorted({lay[n].mm.kernel for lay in eng.layers for n in LINEARS})
    log(
        f"{name}: {cfg.n_layer}x{cfg.d_model}, window {cfg.seq_len}, built in "
        f"{time.perf_counter() - t0:.1f} s, GEMM kernels {kern}, step_all "
        f"{eng._stacked is not None}"
    )
    n_win = max(1, 1024 // cfg.seq_len)
    res = {
        "config": cfg.to_dict(),
        "n_params": cfg.n_params(),
        "gemm_kernels": kern,
        "step_all": eng._stacked is not None,
        "engine": type(run).__name__,
        "weight_max": wmax,
        "forward_windows": n_win,
        "by_threads": {},
    }
    positions = step_positions(eng.window, args.quick)
    g = torch.Generator().manual_seed(1)
    win = torch.randint(0, eng.vocab_size, (n_win, eng.window), generator=g)
    for th in args.threads:
        set_threads(th)
        r = {"load_before": loadavg()}
        log(f"  threads {th}: forward ({n_win} x {eng.window} tokens)")
        r["forward"], ref = forward_throughput(run, win, args.runs, args.budget)
        log(f"    {r['forward']['tok_s']:.0f} tok/s; breakdown")
        if kern != ["f32"]:  # the timed choice did not pick f32 everywhere: show f32 too
            forced = Engine(mf, matmul="f32")
            log("    forward with matmul='f32' forced")
            r["forward_f32_forced"], _ = forward_throughput(forced, win, args.runs, args.budget)
            r["forward_f32_forced"]["s_per_token"] = r["forward_f32_forced"]["wall_s"] / win.numel()
            r["forward_f32_forced_breakdown"] = forward_breakdown(forced, win, ref, 3)
            del forced
        r["forward_breakdown"] = forward_breakdown(run, win, ref, 3 if args.quick else 5)
        r["step"] = {}
        for b in BATCHES:
            r["step"][b] = step_throughput(run, b, positions, args.runs, args.budget / 2)
            log(f"    step B={b}: {r['step'][b]['tok_s']:.0f} tok/s")
        mid = eng.window // 2
        r["step_breakdown"] = {}
        for b in (1, 32):
            pos = torch.full((b,), mid, dtype=torch.int64)
            st, tok = run.new_state(b), torch.zeros(b, dtype=torch.int64)
            t = timed(lambda: run.step(st, tok, pos), 9, args.budget / 4)["cpu_s"]
            r["step_breakdown"][b] = step_breakdown(eng, b, mid, t, args.runs)
        log(f"  threads {th}: exact GEMM limit")
        lim = {"forward": gemm_limit(cfg, wmax, win.numel(), args.runs)}
        for b in BATCHES:
            lim[f"step_B{b}"] = gemm_limit(cfg, wmax, b, args.runs)
        for key in ("forward", "forward_f32_forced"):
            if key in r:
                f = r[key]
                f["s_per_token"] = f["wall_s"] / f["tokens"]
                f["cpu_s_per_token"] = f["cpu_s"] / f["tokens"]
                f["engine_over_min"] = f["cpu_s_per_token"] / lim["forward"]["min_s_per_token"]
        for b in BATCHES:
            s = r["step"][b]
            s["s_per_token"] = s["wall_s_per_step"] / b
            s["cpu_s_per_token"] = s["cpu_s_per_step"] / b
            s["engine_over_min"] = s["cpu_s_per_token"] / lim[f"step_B{b}"]["min_s_per_token"]
        r["gemm_limit"] = lim
        r["load_after"] = loadavg()
        res["by_threads"][th] = r
    return res


def _us(v: float) -> str:
    return f"{1e6 * v:,.0f}" if v >= 1e-5 else f"{1e6 * v:.2f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    simd = ", ".join(k for k in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx") if m.get(k))
    lines = [
        f"# Engine benchmark {report['date']}{' (quick)' if report['quick'] else ''}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, SIMD: {simd or 'none of avx2/avx512/vnni/amx'}; "
        f"load average before {report['load_before']}, after {report.get('load_after')}; "
        f"the passes in AMX tiles: {'yes' if m.get('amx_tiles') else 'no'}  ",
        f"Commit {report['commit']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + "  ",
        f"Wall-time medians (runs column); random weights of each size's shape; "
        f"{report.get('seconds')} s in all.",
        "",
        "## Throughput and the exact-GEMM limit",
        "",
        "| model | threads | path | tokens/s (wall) | tokens/s (CPU) | wall us/token | "
        "CPU us/token | runs | best exact GEMM GOP/s at M (kernel) | min us/token (linears) | "
        "engine CPU / min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in report["models"].items():
        for th, r in res["by_threads"].items():
            f, lim = r["forward"], r["gemm_limit"]
            kern = "/".join(res["gemm_kernels"])
            rows = [("forward", f"forward (M={f['tokens']}, GEMM kernels {kern})", f)]
            if "forward_f32_forced" in r:
                rows.append(("forward", "forward, matmul='f32' forced", r["forward_f32_forced"]))
            for b, s in r["step"].items():
                rows.append((f"step_B{b}", f"step B={b}", s))
            for key, label, s in rows:
                lm = lim[key]
                kinds = sorted({v["best"] for v in lm["by_shape"].values()})
                lines.append(
                    f"| {name} | {th} | {label} | {s['tok_s']:,.0f} | {1 / s['cpu_s_per_token']:,.0f} | "
                    f"{_us(s['s_per_token'])} | {_us(s['cpu_s_per_token'])} | {s['runs']} | "
                    f"{lm['gops']:.1f} ({'/'.join(kinds)}) | "
                    f"{_us(lm['min_s_per_token'])} | {s['engine_over_min']:.1f}x |"
                )
    lines += [
        "",
        "min = every linear (blocks and tied logit head) at the fastest exact kernel measured "
        "for its shape at that M (int_mm only where it passes the exactness self-test; f32 = one "
        "GEMM of both int8 halves, product only; i16 = rowops.linear_i16, the engine's fused "
        "linear with its epilogue, one thread). "
        "GOP/s counts 2 M K N useful ops per linear; the limit is timed in CPU seconds (1 thread: "
        "the time on an idle core), and engine / min compares the engine's CPU time with it. "
        "tokens/s (CPU) = 1 / CPU s per token: the rate on an idle core, as wall time on this "
        "shared machine includes waits for a core. Steps are averaged over positions spread "
        "over the window. CPU = user + sys of the process, all threads.",
        "",
        "GOP/s per kernel for all linears (where it applies to every shape):",
        "",
    ]
    for name, res in report["models"].items():
        for th, r in res["by_threads"].items():
            parts = [
                f"{k}: " + ", ".join(f"{kk} {v:.1f}" for kk, v in lm["by_kernel_gops"].items())
                for k, lm in r["gemm_limit"].items()
            ]
            lines.append(f"- {name}, {th} thread(s): " + "; ".join(parts))
    lines.append("")
    for name, res in report["models"].items():
        for th, r in res["by_threads"].items():
            fb = r["forward_breakdown"]
            lines += [
                f"## Where the time goes: {name}, {th} thread(s)",
                "",
                "CPU time (this process); step totals are the measured step, its linears and "
                "attention the same numba kernels timed alone (rest = the difference, negative "
                "where the standalone calls cost more than inside step_all).",
                "",
                "| path | total CPU ms | linears | attention | blocks | rest |",
                "|---|---|---|---|---|---|",
            ]
            items = [(f"forward {r['forward']['tokens']} tokens (wrapped kernels)", fb)]
            if "forward_f32_forced_breakdown" in r:
                items.append(("forward, matmul='f32' forced", r["forward_f32_forced_breakdown"]))
            for b, sb in r["step_breakdown"].items():
                items.append((f"step B={b} at position {sb['position']} (standalone kernels)", sb))
            for label, part in items:
                tot, gr = part["total_s"], part["groups_s"]
                cells = [
                    f"{1e3 * gr.get(k, 0.0):.2f} ms ({100 * gr.get(k, 0.0) / tot:.0f}%)"
                    for k in ("linears", "attention", "blocks", "rest")
                ]
                lines.append(f"| {label} | {1e3 * tot:.2f} | " + " | ".join(cells) + " |")
            lines += ["", "Forward stages (exclusive):", ""]
            lines += [
                f"- {k}: {1e3 * v:.1f} ms ({100 * v / fb['total_s']:.0f}%)"
                for k, v in fb["stages_s"].items()
                if v > 0.005 * fb["total_s"]
            ]
            lines.append("")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs, positions W/4 and 3W/4")
    ap.add_argument("--models", default="default,golf", help="comma list of: " + ",".join(MODELS))
    ap.add_argument("--threads", default="1", help="thread counts (torch and numba)")
    ap.add_argument("--runs", type=int, default=None, help="runs per median (default 5, quick 3)")
    ap.add_argument("--tag", default="", help="file name tag: engine-DATE-TAG.json")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    a.models = a.models.split(",")
    a.threads = [int(t) for t in a.threads.split(",")]
    a.runs = a.runs or (3 if a.quick else 5)
    a.budget = 20.0 if a.quick else 60.0  # seconds per forward measurement; steps get half
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    report = {
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
        "runs": args.runs,
        "machine": machine_info(),
        "versions": versions(),
        "commit": git_commit(),
        "load_before": loadavg(),
        "models": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    stem = f"engine-{report['date']}{tag}{'-quick' if args.quick else ''}"
    for name in args.models:  # results are written after each model, so a cut run keeps them
        report["models"][name] = bench_model(name, args)
        report["load_after"] = loadavg()
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        md = markdown(report)
        (args.out / f"{stem}.md").write_text(md + "\n")
    print(md)
    log(f"wrote {args.out / stem}.json/.md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
