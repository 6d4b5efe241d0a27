"""Engine benchmark: exact integer engine throughput, per-stage breakdown, and the int8 GEMM limit.

Run: python benchmarks/bench_engine.py [--quick] [--models cpu,golf] [--threads 1,2] [--out DIR]

For each model size (random weights: speed does not depend on them) and each torch thread count:
(a) teacher-forced `Engine.forward` over full windows, tokens/s;
(b) incremental `Engine.step` for B streams in lockstep, tokens/s averaged over the window: the
    step cost is linear in the position, so the mean over positions 0..W-1 is the mean of the
    step times at W/4 and 3W/4 (W/2 with --quick), exact for a linear cost;
(c) a per-stage breakdown of the same forward runs and of one step (B = 32, position W/2), with
    lm_probs and freq_table after each: engine methods (and any numba kernel module the engine
    uses) are wrapped from here, never edited; `_attend` and `step` run as instrumented copies
    only while their source is the one copied (hash) and their outputs equal the engine's, else
    the breakdown has coarse stages (one per engine method);
(d) the machine's limit measured in the same run: torch._int_mm at the engine's linear shapes
    (M = forward rows, or B), hence the minimum time per token (linears at the measured int8
    rate at that M, plus attention MACs at the best int8 rate) and engine time / that minimum.
Wall times are medians of --runs runs (at least 3; a measurement stops after its time budget),
and CPU time (user + sys of all threads, getrusage) is recorded too, as the machine is shared.
`aten_ops` counts the torch operator calls of one forward (1 token) and one step (B = 1).
The lmzip imported is the one Python finds: PYTHONPATH=COPY (with LMZIP_COMMIT=HASH to name it)
measures another version, e.g. a `git archive` of a commit while the working tree is being
edited. Results, written after each model: DIR/engine-YYYY-MM-DD[-quick].json and .md.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = Path("/work/data/tok1024.model")
MODELS = {  # name -> ModelConfig kwargs
    "cpu": {
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
        "avx512_vnni": "avx512_vnni" in flags,
        "amx": "amx_int8" in flags,
    }


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
    return random_model_file(TOKENIZER.read_bytes(), seed=seed, **cfg)


def _rusage() -> tuple[float, float]:
    """(user + sys, sys) CPU seconds of this process, all threads (microsecond resolution)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


def timed(fn, runs: int, budget: float) -> dict:
    """Median wall and CPU (user + sys, all threads) seconds of `runs` calls of fn(); stops
    after 3 calls once `budget` seconds are spent (the machine is shared: slow runs are kept)."""
    walls, cpus, syss = [], [], []
    start = time.perf_counter()
    while len(walls) < runs:
        c0, w0 = _rusage(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        c1 = _rusage()
        cpus.append(c1[0] - c0[0])
        syss.append(c1[1] - c0[1])
        if len(walls) >= 3 and time.perf_counter() - start > budget:
            break
    med = statistics.median
    return {"wall_s": med(walls), "cpu_s": med(cpus), "sys_s": med(syss), "runs": len(walls)}


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts aten operator calls (each one a dispatch with its Python/C++ overhead)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    with _CountOps() as c:
        fn()
    return c.n


# -- (a) + (b): throughput ---------------------------------------------------------------------
def step_positions(window: int, quick: bool) -> list[int]:
    """Midpoints of equal parts of the window: their mean step time is the window mean."""
    parts = 1 if quick else 2
    return [int((2 * j + 1) * window / (2 * parts)) for j in range(parts)]


def step_throughput(eng, b: int, positions: list[int], runs: int, budget: float) -> dict:
    g = torch.Generator().manual_seed(2)
    state = eng.new_state(b)
    tok = torch.randint(0, eng.vocab_size, (b,), generator=g)
    per_pos = {}
    for p in positions:
        pos = torch.full((b,), p, dtype=torch.int64)
        eng.step(state, tok, pos)  # warm-up (and a realistic cache write)
        per_pos[p] = timed(lambda pos=pos: eng.step(state, tok, pos), runs, budget / len(positions))
    mean = {
        k: statistics.mean(r[k] for r in per_pos.values()) for k in ("wall_s", "cpu_s", "sys_s")
    }
    return {
        "B": b,
        "positions": positions,
        "wall_s_per_step": mean["wall_s"],
        "cpu_s_per_step": mean["cpu_s"],
        "sys_s_per_step": mean["sys_s"],
        "tok_s": b / mean["wall_s"],
        "runs": min(r["runs"] for r in per_pos.values()),
        "by_position": {p: r["wall_s"] for p, r in per_pos.items()},
    }


# -- (c): per-stage breakdown ------------------------------------------------------------------
class Stages:
    """Exclusive wall time per stage: nested stages are subtracted from their parent."""

    def __init__(self):
        self.time = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack: list[float] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        self._stack.append(0.0)
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.time[name] += dt - self._stack.pop()
            self.calls[name] += 1
            if self._stack:
                self._stack[-1] += dt

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return wrapped


def _attend_timed(st: Stages):
    """A copy of Engine._attend with a timer per step; checked equal to the engine's output."""
    from lmzip.numerics import ATT_EXP_SIZE, rshift_round

    def _attend(self, q, k, v, allowed, gain):
        b, h, tq, e = q.shape
        g = h // self.kv
        with st("att QK matmul (f32)"):
            qg = q.reshape(b, self.kv, g * tq, e).float()
            dot = qg @ k.float().transpose(-1, -2)
        with st("att logits (int64 scale)"):
            dot = dot.long().view(b, h, tq, -1)
            logit = rshift_round(dot * gain[None, :, None, None], 16)
        with st("att mask"):
            logit = torch.where(allowed, logit, torch.full_like(logit, -(1 << 62)))
        with st("att softmax max+exp lookup"):
            delta = logit.amax(dim=-1, keepdim=True) - logit
            idx = torch.clamp(delta >> 8, max=ATT_EXP_SIZE)
            w = self.att_exp[idx]
        with st("att softmax sum+div"):
            p = torch.div(w << 16, w.sum(dim=-1, keepdim=True), rounding_mode="floor")
        with st("att PV matmul (f64)"):
            o = p.view(b, self.kv, g * tq, -1).double() @ v.double()
        with st("att PV out (int64)"):
            o = o.long().view(b, h, tq, e)
            return rshift_round(o, 16).transpose(1, 2).reshape(b, tq, h * e)

    return _attend


def _step_timed(st: Stages):
    """A copy of Engine.step with the KV-cache work timed; checked equal to the engine's."""

    @torch.no_grad()
    def step(self, state, tokens, pos):
        b = tokens.size(0)
        with st("step setup (mask)"):
            tokens, pos = tokens.to(self.device), pos.to(self.device)
            rows = torch.arange(b, device=self.device)
            tk = int(pos.max()) + 1
            allowed = (torch.arange(tk, device=self.device)[None, :] <= pos[:, None])[:, None, None]

        def attn(i, q, k, v, gain):
            with st("kv cache write"):
                state.k[i][rows, :, pos] = k
                state.v[i][rows, :, pos] = v.int()
            with st("kv cache read (v int64 copy)"):
                kc, vc = state.k[i][:, :, :tk], state.v[i][:, :, :tk].long()
            return self._attend(q[:, :, None], kc, vc, allowed, gain).reshape(b, -1)

        x = self._layers(self._embed(tokens), pos, attn)
        return self._logits(x)

    return step


STAGE_NAMES = {  # Engine methods; others are timed as "Engine.<name>"
    "_normquant": "normquant (RMSNorm+int8)",
    "_absquant": "absquant (int8)",
    "_qk": "qk-norm + rope",
    "_embed": "embedding",
    "_layers": "residual/clamp/relu2/skips",
    "_logits": "logits clamp",
    "_attend": "attention (all)",
    "forward": "forward setup",
    "step": "step other (mask, kv cache)",
}
NOT_TIMED = {"__init__", "_rope_tables", "new_state"}


def _patch_list():
    """(object, attribute, stage name) of everything timed: engine methods, the linear and
    matmul wrappers, torch._int_mm, softcap, and any fused kernel module the engine uses."""
    import types

    import lmzip.engine as E
    import lmzip.kernels as K

    out = [
        (E._Linear, "__call__", "linear rescale (int64)"),
        (K.MatMul, "__call__", "int_mm .long() result"),
        (torch, "_int_mm", "_int_mm (int8 GEMM)"),
    ]
    for attr, v in vars(E.Engine).items():
        if attr not in NOT_TIMED and isinstance(v, (types.FunctionType, staticmethod)):
            out.append((E.Engine, attr, STAGE_NAMES.get(attr, f"Engine.{attr}")))
    if callable(getattr(E, "softcap_q16", None)):
        out.append((E, "softcap_q16", "softcap"))
    for mod in [m for m in vars(E).values() if isinstance(m, types.ModuleType)]:
        if mod.__name__.startswith("lmzip.") and mod.__name__ not in ("lmzip.kernels",):
            for attr, v in vars(mod).items():
                if callable(v) and not attr.startswith("_") and hasattr(v, "py_func"):
                    out.append((mod, attr, f"{mod.__name__.split('.')[-1]}.{attr}"))
    return out


# sha256[:16] of the engine sources the two copies above were made from (commit 4b4af57):
# a copy runs only in place of that very source, and its output is checked equal too.
COPIED_FROM = {"_attend": "b8a1f703baefcdf3", "step": "9b002637d6a7f272"}


def _copy_matches(attr: str) -> bool:
    import hashlib
    import inspect

    import lmzip.engine as E

    src = inspect.getsource(getattr(E.Engine, attr))
    return hashlib.sha256(src.encode()).hexdigest()[:16] == COPIED_FROM[attr]


@contextlib.contextmanager
def instrumented(st: Stages, fine: bool):
    """Wrap engine/kernel functions with stage timers; restore them afterwards. fine: run
    `_attend` and `step` as the instrumented copies above (the caller checks the outputs)."""
    saved = []
    for obj, attr, name in _patch_list():
        raw = obj.__dict__.get(attr, getattr(obj, attr))
        saved.append((obj, attr, raw))
        if fine and attr in COPIED_FROM and isinstance(obj, type) and _copy_matches(attr):
            new = _attend_timed(st) if attr == "_attend" else _step_timed(st)
        elif isinstance(raw, staticmethod):
            new = staticmethod(st.wrap(name, raw.__func__))
        else:
            new = st.wrap(name, raw)
        setattr(obj, attr, new)
    try:
        yield
    finally:
        for obj, attr, raw in reversed(saved):
            setattr(obj, attr, raw)


def profile(setup, ref: torch.Tensor, runs: int, budget: float) -> dict:
    """Instrumented runs of go = setup() (setup untimed; go() -> logits), then lm_probs and
    freq_table: median exclusive seconds per stage, and the engine's own wall time per run.
    Fine stages need the instrumented copies to reproduce `ref` exactly, else coarse ones."""
    from lmzip.numerics import freq_table, lm_probs

    can_fine = all(_copy_matches(a) for a in COPIED_FROM)
    for fine in (True, False) if can_fine else (False,):
        samples, start, ok = [], time.perf_counter(), True
        while len(samples) < runs:
            st, go = Stages(), setup()
            c0 = _rusage()
            try:
                with instrumented(st, fine), st("total"):
                    logits = go()
                    with st("probabilities (lm_probs)"):
                        p = lm_probs(logits)
                    with st("freq table"):
                        freq_table(p.reshape(-1, p.size(-1)), 24)
            except Exception as e:  # the engine changed under the copies: use coarse stages
                if not fine:
                    raise
                log(f"  instrumented copies fail on this engine ({type(e).__name__})")
                ok = False
                break
            c1 = _rusage()
            ok = torch.equal(logits, ref)
            if not ok:
                break
            d = dict(st.time)
            d["other (untimed)"] = d.pop("total")
            post = d["probabilities (lm_probs)"] + d["freq table"]
            d["_engine"] = sum(d.values()) - post
            d["_cpu"] = c1[0] - c0[0]
            samples.append(d)
            if len(samples) >= 3 and time.perf_counter() - start > budget:
                break
        if ok:
            break
        log("  instrumented copies disagree with the engine; coarse stages only")
    med = {k: statistics.median(d.get(k, 0.0) for d in samples) for k in samples[0]}
    engine, cpu = med.pop("_engine"), med.pop("_cpu")
    return {
        "fine": fine,
        "runs": len(samples),
        "engine_wall_s": engine,
        "engine_cpu_s": cpu,
        "total_s": sum(med.values()),
        "stages_s": dict(sorted(med.items(), key=lambda kv: -kv[1])),
    }


def forward_profile(eng, n_win: int, runs: int, budget: float) -> tuple[dict, dict]:
    """(a) and the forward half of (c) from the same runs: wrappers cost microseconds per call,
    a forward takes seconds (the uninstrumented warm-up run is recorded to show it)."""
    g = torch.Generator().manual_seed(1)
    win = torch.randint(0, eng.vocab_size, (n_win, eng.window), generator=g)
    t0 = time.perf_counter()
    ref = eng.forward(win)
    plain = time.perf_counter() - t0
    prof = profile(lambda: lambda: eng.forward(win), ref, runs, budget)
    n = n_win * eng.window
    thr = {
        "tokens": n,
        "wall_s": prof["engine_wall_s"],
        "cpu_s": prof["engine_cpu_s"],
        "tok_s": n / prof["engine_wall_s"],
        "runs": prof["runs"],
        "uninstrumented_first_run_s": plain,
    }
    return thr, prof


def step_profile(eng, b: int, runs: int, budget: float) -> dict:
    """The step half of (c): B streams at position W/2."""
    g = torch.Generator().manual_seed(3)
    tok = torch.randint(0, eng.vocab_size, (b,), generator=g)
    pos = torch.full((b,), eng.window // 2, dtype=torch.int64)
    ref = eng.step(eng.new_state(b), tok, pos)

    def setup():
        state = eng.new_state(b)  # allocation (zeroing the caches) is not a stage
        return lambda: eng.step(state, tok, pos)

    return profile(setup, ref, runs, budget)


# -- (d): the int8 GEMM limit ------------------------------------------------------------------
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


def gemm_seconds(m: int, k: int, n: int, runs: int) -> float:
    """Median seconds of one torch._int_mm [m, k] x [k, n] (inner loop of >= ~20 ms)."""
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-31, 32, (n, k), generator=g, dtype=torch.int8).t().contiguous()
    torch._int_mm(a, w)
    reps, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch._int_mm(a, w)
        t = time.perf_counter() - t0
        if t > 0.02:
            break
        reps *= 4
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch._int_mm(a, w)
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def gemm_limit(cfg, m: int, runs: int) -> dict:
    """Seconds per token of all linears at M = m rows, and the aggregate int8 GOP/s."""
    shapes = linear_shapes(cfg)
    per = {}
    sec = ops = 0.0
    for name, count, k, n in shapes:
        t = gemm_seconds(m, k, n, runs)
        per[name] = {"K": k, "N": n, "gops": 2 * m * k * n / t / 1e9}
        sec += count * t / m
        ops += count * 2 * k * n
    return {
        "M": m,
        "s_per_token": sec,
        "ops_per_token": ops,
        "gops": ops / sec / 1e9,
        "by_shape": per,
    }


def attention_ops(cfg, mean_context: float) -> float:
    """int ops per token of QK and PV (2 per MAC) at a mean context length."""
    return cfg.n_layer * 2 * 2 * cfg.n_head * cfg.head_dim * mean_context


# -- the run -----------------------------------------------------------------------------------
def bench_model(name: str, args) -> dict:
    from lmzip.engine import Engine
    from lmzip.model import ModelConfig

    cfg = ModelConfig(**MODELS[name])
    t0 = time.perf_counter()
    eng = Engine(model_file(name))
    log(
        f"{name}: {cfg.n_layer}x{cfg.d_model}, window {cfg.seq_len}, built in "
        f"{time.perf_counter() - t0:.1f} s, kernels {sorted({eng.emb.mm.kernel})}"
    )
    n_win = args.windows or max(1, 1024 // cfg.seq_len)
    shapes = linear_shapes(cfg)
    res = {
        "config": cfg.to_dict(),
        "n_params": cfg.n_params(),
        "linear_params": sum(c * k * n for _, c, k, n in shapes),
        "kernels": sorted({lay[n].mm.kernel for lay in eng.layers for n in LINEARS}),
        "forward_windows": n_win,
        "by_threads": {},
    }
    positions = step_positions(eng.window, args.quick)
    g = torch.Generator().manual_seed(5)
    tok1 = torch.randint(0, eng.vocab_size, (1,), generator=g)
    half = torch.full((1,), eng.window // 2, dtype=torch.int64)
    st1 = eng.new_state(1)
    res["aten_ops"] = {
        "forward": count_ops(lambda: eng.forward(tok1[None])),
        "step": count_ops(lambda: eng.step(st1, tok1, half)),
    }
    for th in args.threads:
        torch.set_num_threads(th)
        r = {}
        log(f"  threads {th}: forward ({n_win} x {eng.window} tokens), instrumented")
        r["forward"], fwd_prof = forward_profile(eng, n_win, args.runs, args.budget)
        r["step"] = {}
        for b in args.batches:
            log(f"  threads {th}: step B={b} at positions {positions}")
            r["step"][b] = step_throughput(eng, b, positions, args.runs, args.budget / 2)
        log(f"  threads {th}: step breakdown B=32")
        r["breakdown"] = {
            "forward": fwd_prof,
            "step": step_profile(eng, 32, args.runs, args.budget / 3),
        }
        log(f"  threads {th}: int8 GEMM limit")
        lim = {"forward": gemm_limit(cfg, n_win * eng.window, args.runs)}
        for b in args.batches:
            lim[f"step_B{b}"] = gemm_limit(cfg, b, args.runs)
        best = max(v["gops"] for v in lim.values())
        att_f = attention_ops(cfg, (eng.window + 1) / 2)
        att_s = attention_ops(cfg, statistics.mean(p + 1 for p in positions))
        f = r["forward"]
        f["min_s_per_token"] = lim["forward"]["s_per_token"] + att_f / best / 1e9
        f["engine_over_min"] = f["wall_s"] / f["tokens"] / f["min_s_per_token"]
        for b in args.batches:
            s = r["step"][b]
            s["min_s_per_token"] = lim[f"step_B{b}"]["s_per_token"] + att_s / best / 1e9
            s["engine_over_min"] = s["wall_s_per_step"] / b / s["min_s_per_token"]
        r["gemm"] = lim
        r["gemm_best_gops"] = best
        r["attention_ops_per_token"] = {"forward": att_f, "step": att_s}
        res["by_threads"][th] = r
    return res


def _ms(v: float) -> str:
    return f"{1e3 * v:.3f}" if v < 0.01 else f"{1e3 * v:.1f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Engine benchmark {report['date']}{' (quick)' if report['quick'] else ''}",
        "",
        (
            f"Machine: {m['cpu']}, {m['cores']} cores, AVX512-VNNI {m['avx512_vnni']}; "
            f"load average before {report['load_before']}, after {report['load_after']}  "
        ),
        f"Commit {report['commit']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + "  ",
        (
            f"Wall-time medians of up to {report['runs']} runs (at least 3); random weights; "
            f"{report['seconds']} s in all."
        ),
        "",
        "## Throughput and the int8 GEMM limit",
        "",
        (
            "| model | threads | path | tokens/s | wall ms/token | CPU ms/token | sys % | "
            "int8 GOP/s at M | min ms/token | engine / min |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in report["models"].items():
        for th, r in res["by_threads"].items():
            f = r["forward"]
            n = f["tokens"]
            lines.append(
                f"| {name} | {th} | forward (M={n}) | {f['tok_s']:.0f} | {_ms(f['wall_s'] / n)} | "
                f"{_ms(f['cpu_s'] / n)} | | {r['gemm']['forward']['gops']:.0f} | "
                f"{_ms(f['min_s_per_token'])} | {f['engine_over_min']:.1f}x |"
            )
            for b, s in r["step"].items():
                b = int(b)
                sys_pct = 100 * s["sys_s_per_step"] / max(1e-12, s["cpu_s_per_step"])
                lines.append(
                    f"| {name} | {th} | step B={b} | {s['tok_s']:.0f} | "
                    f"{_ms(s['wall_s_per_step'] / b)} | {_ms(s['cpu_s_per_step'] / b)} | "
                    f"{sys_pct:.0f} | {r['gemm'][f'step_B{b}']['gops']:.0f} | "
                    f"{_ms(s['min_s_per_token'])} | {s['engine_over_min']:.1f}x |"
                )
    lines += [
        "",
        (
            "min = every linear (blocks and logit head) at the int8 `_int_mm` rate measured "
            "at that M, plus the attention MACs at the best measured int8 rate; forward "
            "contexts average (W+1)/2, steps are averaged over the window. CPU = user + sys "
            "of all threads; sys is mostly page faults of freshly allocated large tensors."
        ),
        "",
        "aten operator calls per call, B=1: "
        + "; ".join(
            f"{name} forward(1 token) {res['aten_ops']['forward']}, step {res['aten_ops']['step']}"
            for name, res in report["models"].items()
        ),
        "",
    ]
    for name, res in report["models"].items():
        for th, r in res["by_threads"].items():
            bd = r["breakdown"]
            fw, st = bd["forward"], bd["step"]
            lines += [
                f"## Breakdown: {name}, {th} thread(s)",
                "",
                (
                    f"forward: {r['forward']['tokens']} tokens, {_ms(fw['total_s'])} ms "
                    f"({fw['runs']} runs, {'fine' if fw['fine'] else 'coarse'}); step: B=32 at "
                    f"position W/2, {_ms(st['total_s'])} ms ({st['runs']} runs, "
                    f"{'fine' if st['fine'] else 'coarse'}); both include lm_probs and freq_table"
                ),
                "",
                "| stage | forward ms | % | step ms | % |",
                "|---|---|---|---|---|",
            ]
            for s in dict.fromkeys([*fw["stages_s"], *st["stages_s"]]):
                cells = []
                for part in (fw, st):
                    v = part["stages_s"].get(s)
                    tot = part["total_s"]
                    cells += ["", ""] if v is None else [_ms(v), f"{100 * v / tot:.1f}"]
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs, B in (1, 32), one position")
    ap.add_argument("--models", default="cpu,golf", help="comma list of: " + ",".join(MODELS))
    ap.add_argument("--threads", default="1,2", help="torch thread counts")
    ap.add_argument("--runs", type=int, default=None, help="runs per median (default 5, quick 3)")
    ap.add_argument(
        "--windows", type=int, default=0, help="windows per forward (default: 1024 tokens' worth)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    a.models = a.models.split(",")
    a.threads = [int(t) for t in a.threads.split(",")]
    a.runs = a.runs or (3 if a.quick else 5)
    a.batches = [1, 32] if a.quick else [1, 8, 32, 64]
    a.budget = 30.0 if a.quick else 60.0  # seconds per forward measurement; steps get half
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
    stem = f"engine-{report['date']}{'-quick' if args.quick else ''}"
    for name in args.models:  # results are written after each model, so a cut run keeps them
        report["models"][name] = bench_model(name, args)
        report["load_after"] = loadavg()
        report["seconds"] = round(time.perf_counter() - t0, 1)
        md = markdown(report)
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (args.out / f"{stem}.md").write_text(md + "\n")
    print(md)
    log(f"wrote {args.out / stem}.json/.md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
