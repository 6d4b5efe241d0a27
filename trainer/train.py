"""The training loop: data -> DDP GPT -> Muon/Adam with wallclock-aware warmdown -> QAT -> export.

    python -m trainer --preset cpu --data corpus.txt.zst --out model.lmzm --run-dir runs/cpu1
    torchrun --nproc_per_node=8 -m trainer --preset golf-baseline --data fineweb_*.bin ...

Budget: training stops when `progress` reaches 1, where progress is the larger of
step / max_steps and training-seconds / max_seconds (either may be off). The learning rate decays
linearly to 0 over the last `warmdown_frac` of progress (Parameter Golf's wallclock-aware
warmdown), and QAT is on over the last `qat_frac`. Training seconds exclude validation and
checkpoints and are agreed by all ranks each step (max), so every rank takes the same decisions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lmzip.model import GPT
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import TrainConfig, resolve_dtype
from trainer.evaluate import ValSet, evaluate
from trainer.optim import build_optimizers
from trainer.prepare import prepare
from trainer.shards import BatchSampler, TokenSource, val_stream


class Dist:
    """Rank / world from torchrun's environment; a single process when they are absent."""

    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _log(msg: str) -> None:
    print(msg, flush=True)


def lr_multiplier(cfg: TrainConfig, step: int, progress: float) -> float:
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    if t.warmdown_frac > 0 and progress > 1.0 - t.warmdown_frac:
        return warm * max(0.0, (1.0 - progress) / t.warmdown_frac)
    return warm


def progress_of(cfg: TrainConfig, step: int, seconds: float) -> float:
    t = cfg.train
    p = 0.0
    if t.max_steps > 0:
        p = max(p, step / t.max_steps)
    if t.max_seconds > 0:
        p = max(p, seconds / t.max_seconds)
    return p


def _versions() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "commit": commit,
        "host": platform.node(),
        "argv": sys.argv,
    }


def _batch_shape(cfg: TrainConfig, world: int) -> tuple[int, int, int]:
    """(global_seqs, micro_seqs, accum) with global = world * micro * accum exactly."""
    t, seq = cfg.train, cfg.model.seq_len
    if t.global_batch_tokens % seq:
        raise ValueError(f"train.global_batch_tokens must be a multiple of seq_len {seq}")
    global_seqs = t.global_batch_tokens // seq
    if global_seqs % world:
        raise ValueError(f"{global_seqs} sequences per step do not split over {world} processes")
    local = global_seqs // world
    micro = t.micro_batch_seqs or local
    micro = min(micro, local)
    if local % micro:
        raise ValueError(f"micro_batch_seqs {micro} does not divide {local} sequences per process")
    return global_seqs, micro, local // micro


def run(cfg: TrainConfig, data: list[str], out: str | None, run_dir: str) -> dict:
    """Train (resuming from run_dir if it has a checkpoint) and export to `out` if given."""
    t = cfg.train
    if t.max_steps <= 0 and t.max_seconds <= 0:
        raise ValueError("set train.max_steps or train.max_seconds (both are off)")
    device_kind = "cuda" if t.device == "auto" and torch.cuda.is_available() else t.device
    device_kind = "cpu" if device_kind == "auto" else device_kind
    dd = Dist(device_kind)
    if device_kind == "cuda":
        torch.cuda.set_device(dd.local_rank)
        device = torch.device("cuda", dd.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    dtype = resolve_dtype(t.dtype, device_kind)
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)

    # -- data (rank 0 tokenizes; the others wait and read the same cache) --------------------
    cache = cfg.data.cache_dir or str(Path(out or run_dir).resolve().parent / "shards")
    if dd.master:
        prep = prepare(cfg, data, cache)
    dd.barrier()
    if not dd.master:
        prep = prepare(cfg, data, cache)
    tok = prep.tokenizer()
    global_seqs, micro, accum = _batch_shape(cfg, dd.world)
    source = TokenSource(prep.train, cfg.model.seq_len)
    sampler = BatchSampler(source, global_seqs, t.seed)
    val = ValSet(val_stream(prep.val, cfg.eval.max_tokens), tok)

    # -- model, optimizers, resume --------------------------------------------------------------
    torch.manual_seed(t.seed)
    model = GPT(cfg.model).to(device)
    opts = build_optimizers(model, t)
    ema = [p.detach().clone().float() for p in model.parameters()] if t.ema_decay > 0 else None
    state = {"step": 0, "train_seconds": 0.0, "tokens": 0, "qat": False}
    ckpt_path = run_path / "ckpt.pt"
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, map_location=device)
        if ck["config"]["model"] != cfg.model.to_dict():
            raise ValueError(f"{ckpt_path} holds another model config; use a fresh --run-dir")
        model.load_state_dict(ck["model"])
        for opt, sd in zip(opts, ck["optims"]):
            opt.load_state_dict(sd)
        if ema is not None and ck.get("ema") is not None:
            for e, v in zip(ema, ck["ema"]):
                e.copy_(v)
        state = ck["state"]
        if dd.master:
            _log(
                f"resumed {ckpt_path} at step {state['step']} "
                f"({state['train_seconds']:.0f}s, {state['tokens']:,} tokens)"
            )
    model.set_qat(state["qat"])
    if dd.master:
        (run_path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        versions = _versions() | {"world_size": dd.world, "device": str(device)}
        (run_path / "versions.json").write_text(json.dumps(versions, indent=1))
        _log(
            f"model {cfg.model.n_params():,} params | {len(prep.train)} train shards, "
            f"{source.n_tokens:,} tokens, {source.n_windows:,} windows | val {len(val):,} tokens"
        )
        _log(
            f"batch: {global_seqs} seqs x {cfg.model.seq_len} = {t.global_batch_tokens:,} "
            f"tokens/step = {dd.world} procs x {accum} accum x {micro} seqs | {device} "
            f"{dtype} | {torch.get_num_threads()} threads"
        )

    fwd = model
    use_compile = t.compile == "on" or (t.compile == "auto" and device_kind == "cuda")
    if use_compile:
        fwd = torch.compile(model)
    if dd.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[dd.local_rank] if device_kind == "cuda" else None
        )
    amp = (
        (lambda: torch.autocast(device_kind, dtype=torch.bfloat16))
        if dtype == "bf16"
        else contextlib.nullcontext
    )
    # appended across resumes; closed when the loop ends
    metrics = open(run_path / "metrics.jsonl", "a") if dd.master else None  # noqa: SIM115

    def checkpoint() -> None:
        if dd.master:
            save_checkpoint(
                ckpt_path,
                {
                    "version": 1,
                    "config": cfg.to_dict(),
                    "model": model.state_dict(),
                    "optims": [o.state_dict() for o in opts],
                    "ema": ema,
                    "state": dict(state),
                    "prepared": asdict(prep),
                    "data": [str(p) for p in data],
                },
            )
        dd.barrier()

    def validate() -> dict:
        r = evaluate(
            model,
            val,
            cfg.model.seq_len,
            cfg.model.seq_len,
            cfg.eval.batch_seqs,
            device,
            amp(),
            dd.rank,
            dd.world,
        )
        if dd.master:
            _log(
                f"step {state['step']} | val loss {r['loss']:.4f} bpb {r['bpb']:.4f} "
                f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)"
            )
            metrics.write(json.dumps({"step": state["step"], "val": r}) + "\n")
            metrics.flush()
        return r

    def train_step(step: int, progress: float) -> tuple[float, float]:
        """One optimizer step on the global batch of `step`; returns (mean loss, lr multiplier)."""
        mul = lr_multiplier(cfg, step, progress)
        frac = min(1.0, step / t.muon_momentum_warmup_steps) if t.muon_momentum_warmup_steps else 1
        momentum = (1 - frac) * t.muon_momentum_warmup_start + frac * t.muon_momentum
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mul
                if "momentum" in group:
                    group["momentum"] = momentum
        batch = torch.from_numpy(sampler.local_batch(step, dd.rank, dd.world)).to(device)
        loss_sum = torch.zeros((), device=device)
        for m in range(accum):
            xy = batch[m * micro : (m + 1) * micro]
            # DDP all-reduces gradients only on the last micro-batch of the step
            last = m == accum - 1 or dd.world == 1
            ctx = fwd.no_sync() if not last else contextlib.nullcontext()
            with ctx:
                with amp():
                    loss = model_loss(fwd, xy)
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        if dd.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= dd.world
        loss_val = float(loss_sum.item())
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss is {loss_val} at step {step}")
        return loss_val, mul

    model.train()
    if t.compile_warmup_steps > 0:
        # As the golf baseline: compile (and autotune) on a few real steps outside the timed
        # budget, then restore the weights and optimizer state, so the run itself is unchanged.
        saved = copy.deepcopy((model.state_dict(), [o.state_dict() for o in opts]))
        t0 = time.perf_counter()
        for i in range(t.compile_warmup_steps):
            train_step(state["step"] + i, progress_of(cfg, state["step"], state["train_seconds"]))
        model.load_state_dict(saved[0])
        for opt, sd in zip(opts, saved[1]):
            opt.load_state_dict(sd)
        if dd.master:
            _log(
                f"warmup: {t.compile_warmup_steps} steps in {time.perf_counter() - t0:.1f}s "
                "(not counted; weights restored)"
            )

    # -- loop -------------------------------------------------------------------------------------
    last_val = last_ckpt = state["train_seconds"]
    tokens_per_step = t.global_batch_tokens
    t_log, tok_log = time.perf_counter(), 0
    while True:
        progress = progress_of(cfg, state["step"], state["train_seconds"])
        if progress >= 1.0:
            break
        if t.qat_frac > 0 and not state["qat"] and progress >= 1.0 - t.qat_frac:
            state["qat"] = True
            model.set_qat(True)
            if dd.master:
                _log(f"step {state['step']} | QAT on (progress {progress:.3f})")
        t0 = time.perf_counter()
        loss_val, mul = train_step(state["step"], progress)
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, model.parameters()):
                    e.lerp_(p.detach().float(), 1.0 - t.ema_decay)
        if device_kind == "cuda":
            torch.cuda.synchronize()
        state["step"] += 1
        state["tokens"] += tokens_per_step
        state["train_seconds"] = dd.max(state["train_seconds"] + time.perf_counter() - t0)
        tok_log += tokens_per_step
        if dd.master:
            metrics.write(
                json.dumps(
                    {
                        "step": state["step"],
                        "loss": loss_val,
                        "lr_mul": mul,
                        "t": round(state["train_seconds"], 3),
                    }
                )
                + "\n"
            )
            if state["step"] % t.log_every == 0 or state["step"] == 1:
                now = time.perf_counter()
                tps = tok_log / max(now - t_log, 1e-9)
                t_log, tok_log = now, 0
                prog = progress_of(cfg, state["step"], state["train_seconds"])
                eta = state["train_seconds"] * (1 - prog) / max(prog, 1e-9)
                _log(
                    f"step {state['step']} | loss {loss_val:.4f} | lr x{mul:.3f} | "
                    f"{tps:,.0f} tok/s | {state['tokens']:,} tokens | "
                    f"{state['train_seconds'] / 60:.1f} min | ETA {eta / 60:.1f} min"
                    f"{' | qat' if state['qat'] else ''}"
                )
                metrics.flush()
        secs = state["train_seconds"]
        if t.val_every_seconds > 0 and secs - last_val >= t.val_every_seconds:
            validate()
            last_val = secs
            t_log, tok_log = time.perf_counter(), 0  # keep eval time out of tokens/s
        if t.ckpt_every_seconds > 0 and secs - last_ckpt >= t.ckpt_every_seconds:
            checkpoint()
            last_ckpt = secs
            t_log, tok_log = time.perf_counter(), 0  # keep eval time out of tokens/s

    checkpoint()
    final = validate()
    result = {
        "step": state["step"],
        "tokens": state["tokens"],
        "val": final,
        "run_dir": str(run_path),
        "checkpoint": str(ckpt_path),
    }
    if metrics:
        metrics.close()
    if out and dd.master:
        from trainer.export import export_checkpoint

        result["export"] = export_checkpoint(ckpt_path, out, val_tokens=None)
    dd.barrier()
    dd.close()
    return result


def model_loss(fwd: torch.nn.Module, xy: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of windows xy [B, T + 1] (through DDP / compile wrappers)."""
    logits = fwd(xy[:, :-1])
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), xy[:, 1:].reshape(-1)
    )
