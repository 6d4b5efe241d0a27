"""Export: checkpoint -> quantized lmzip model container (.lmzm) with provenance.

    python -m trainer.export --ckpt runs/cpu1/ckpt.pt --out model.lmzm

Evaluates the float model and its quantized twin (QAT forward = exactly the stored weights) on
the run's validation shards, in fp32 with a sliding window, records both in the provenance and
refuses to write a golf-preset model of `export.max_bytes` (16,000,000) bytes or more.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # before torch loads OpenMP; see trainer/__main__.py for why
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
import torch

from lmzip.container import save_model
from lmzip.errors import LmzipError
from lmzip.export import model_file_from_gpt
from lmzip.model import GPT
from lmzip.tokenizer import Tokenizer
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig, resolve_dtype
from trainer.evaluate import ValSet, evaluate
from trainer.shards import val_stream


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def export_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    val_tokens: int | None = None,
    use_ema: bool = True,
    note: str | None = None,
) -> dict:
    """Write `out`; returns {'bytes', 'bpb_float', 'bpb_quant', ...}. val_tokens=0 skips eval;
    `note` (e.g. how a resumed run's schedule went) is kept in the provenance as 'note'."""
    ck = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(ck["config"])
    model = GPT(cfg.model)
    model.load_state_dict(ck["model"])
    ema = ck.get("ema")
    if use_ema and ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema):
                p.copy_(e)
    # the final evaluation may cover all of golf val (~62M tokens): use the GPU when there is one
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    prep = ck["prepared"]
    tok = Tokenizer.load(prep["tokenizer_path"])
    limit = cfg.eval.final_max_tokens if val_tokens is None else val_tokens
    stride = cfg.eval.final_stride or max(1, cfg.model.seq_len // 2)
    result: dict = {}
    if val_tokens != 0:
        val = ValSet(val_stream(prep["val"], limit), tok)
        t0 = time.time()
        # the run's own autocast dtype: bf16 halves this on CPU and moves bpb by ~1e-3 at most
        bf16 = resolve_dtype(cfg.train.dtype, device.type) == "bf16"
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        for name, qat in (("float", False), ("quant", True)):
            model.set_qat(qat)
            r = evaluate(model, val, cfg.model.seq_len, stride, cfg.eval.batch_seqs, device, amp)
            result[f"bpb_{name}"] = round(r["bpb"], 5)
            result["val_tokens"], result["val_bytes"] = r["tokens"], r["bytes"]
        model.set_qat(False)
        _log(
            f"val bpb (stride {stride}, {result['val_tokens']:,} tokens): "
            f"float {result['bpb_float']:.4f}, quantized {result['bpb_quant']:.4f} "
            f"({time.time() - t0:.0f}s)"
        )
    st = ck["state"]
    provenance = {
        "trainer": "lmzip trainer",
        "preset": cfg.preset,
        "data": [os.path.basename(p) for p in ck.get("data", [])],
        "steps": st["step"],
        "tokens_seen": st["tokens"],
        "train_seconds": round(st["train_seconds"], 1),
        "qat": bool(st["qat"]),
        "ema": bool(use_ema and ema is not None),
        "val_bpb_float": result.get("bpb_float"),
        "val_bpb_quant": result.get("bpb_quant"),
        "val_stride": stride,
        "val_tokens": result.get("val_tokens"),
    }
    if note:
        provenance["note"] = note
    mf = model_file_from_gpt(model.cpu(), tok.model_bytes, provenance)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.export-tmp")
    n = save_model(mf, tmp)
    if cfg.export.golf and n >= cfg.export.max_bytes:
        tmp.unlink()
        raise LmzipError(
            f"model is {n:,} bytes: a golf model must be under "
            f"{cfg.export.max_bytes:,} bytes; not written"
        )
    os.replace(tmp, out)
    result["bytes"] = n
    result["path"] = str(out)
    _log(f"wrote {out}: {n:,} bytes ({cfg.model.n_params():,} parameters)")
    return result


@click.command()
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--val-tokens",
    type=int,
    default=None,
    help="validation tokens for the bpb check (default: the preset's; 0 = skip)",
)
@click.option("--no-ema", is_flag=True, help="export the last weights, not the EMA")
@click.option("--note", default=None, help="free text kept in the provenance, e.g. the resumes")
def main(ckpt: str, out: str, val_tokens: int | None, no_ema: bool, note: str | None) -> None:
    """Quantize a training checkpoint into an lmzip model container.

    Example: python -m trainer.export --ckpt runs/cpu1/ckpt.pt --out model.lmzm
    """
    try:
        export_checkpoint(ckpt, out, val_tokens=val_tokens, use_ema=not no_ema, note=note)
    except LmzipError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
