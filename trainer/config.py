"""Training configuration: one frozen, typed dataclass nesting the compressor's `ModelConfig`.

Presets (trainer/presets/*.py) each define `CONFIG: TrainConfig`; the command line changes single
fields with `--set section.field=value` (e.g. `--set train.max_seconds=600`), checked against the
field's type. Unknown keys are errors, so a typo never silently trains the default.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from dataclasses import dataclass, field

from lmzip.model import ModelConfig
from trainer import presets as _presets_pkg


@dataclass(frozen=True)
class DataConfig:
    tokenizer: str = ""  # sentencepiece .model to use; "" = train one on the data (prepare)
    tokenizer_sample_bytes: int = 100_000_000  # text sampled to train a tokenizer
    doc_bytes: int = 65536  # plain text is cut into documents of about this size (blank lines)
    val_fraction: float = 0.005  # share of documents held out, chosen by a hash of their bytes
    split_seed: int = 0  # salt of that hash: another seed is another split
    cache_dir: str = ""  # where shards go; "" = <dir of --out>/shards
    shard_tokens: int = 100_000_000  # tokens per shard file (golf uses 1e8)
    text_field: str = "text"  # the field holding the text in .jsonl / .parquet documents


@dataclass(frozen=True)
class TrainSettings:
    global_batch_tokens: int = 524_288  # tokens per optimizer step over all processes
    micro_batch_seqs: int = 0  # sequences per forward pass per process; 0 = whole share at once
    max_steps: int = 0  # stop after this many steps; 0 = no step limit
    max_seconds: float = 600.0  # stop after this much training time (resume adds up); 0 = none
    warmup_steps: int = 0  # linear LR warmup (the golf baseline uses none)
    warmdown_frac: float = 0.2  # LR decays linearly to 0 over this last fraction of the budget
    qat_frac: float = 0.3  # quantization-aware training over this last fraction of the budget
    matrix_lr: float = 0.04  # Muon, for 2-D block weights
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85  # momentum ramps from this ...
    muon_momentum_warmup_steps: int = 500  # ... to muon_momentum over these steps
    muon_weight_decay: float = 0.0  # decoupled, applied as w -= lr * wd * w
    embed_lr: float = 0.05  # Adam, for the tied embedding
    scalar_lr: float = 0.04  # Adam, for query gains and skip weights
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    ema_decay: float = 0.0  # exponential moving average of weights exported instead; 0 = off
    seed: int = 1337  # model init and data order
    dtype: str = "auto"  # autocast dtype: "bf16", "fp32", or "auto" (bf16 where it is native)
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda"
    compile: str = "auto"  # torch.compile: "auto" (on for cuda), "on", "off"
    compile_warmup_steps: int = 0  # untimed steps before training, then weights are restored
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    log_every: int = 10  # print a progress line every this many steps
    val_every_seconds: float = 600.0  # validate this often (training time); 0 = only at the end
    ckpt_every_seconds: float = 300.0  # checkpoint this often (training time); 0 = only at end


@dataclass(frozen=True)
class EvalConfig:
    max_tokens: int = 1_000_000  # periodic validation uses at most this many val tokens
    batch_seqs: int = 16  # windows per evaluation forward pass
    final_stride: int = 0  # final sliding-window eval stride (tokens); 0 = seq_len // 2
    final_max_tokens: int = 4_000_000  # token cap of the final (export) evaluation


@dataclass(frozen=True)
class ExportConfig:
    golf: bool = False  # a Parameter Golf model: refuse to write >= max_bytes
    max_bytes: int = 16_000_000  # the golf limit (decimal megabytes, as the challenge counts)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d)


def _from_dict(cls, d: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for k, v in d.items():
        t = hints[k]
        kwargs[k] = _from_dict(t, v) if dataclasses.is_dataclass(t) else v
    return cls(**kwargs)


def _parse_value(key: str, text: str, typ: type):
    if typ is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected a boolean (true/false), got {text!r}")
    if typ is int:
        try:
            return int(text.replace("_", ""), 0)
        except ValueError:
            try:  # accept 5e5-style integers written as floats, if exact
                f = float(text)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise ValueError(f"--set {key}: expected an integer, got {text!r}") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected a number, got {text!r}") from None
    if typ is str:
        return text
    raise ValueError(f"--set {key}: fields of type {typ} cannot be set from the command line")


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.field=value` strings; raises ValueError on unknown keys or bad values."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        path = key.strip().split(".")
        cfg = _replace_path(cfg, path, key.strip(), text)
    cfg.model.validate()
    return cfg


def _replace_path(obj, path: list[str], key: str, text: str):
    hints = typing.get_type_hints(type(obj))
    name = path[0]
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
        known = ", ".join(sorted(f.name for f in dataclasses.fields(obj)))
        raise ValueError(f"--set {key}: unknown key {name!r} (known here: {known})")
    typ = hints[name]
    if dataclasses.is_dataclass(typ):
        if len(path) == 1:
            raise ValueError(f"--set {key}: {name!r} is a section; set one of its fields")
        return dataclasses.replace(
            obj, **{name: _replace_path(getattr(obj, name), path[1:], key, text)}
        )
    if len(path) > 1:
        raise ValueError(f"--set {key}: {name!r} is not a section")
    return dataclasses.replace(obj, **{name: _parse_value(key, text, typ)})


def preset_names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(_presets_pkg.__path__))


def load_preset(name: str) -> TrainConfig:
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(preset_names())})")
    mod = importlib.import_module(f"trainer.presets.{name.replace('-', '_')}")
    cfg = mod.CONFIG
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"preset {name}: CONFIG is not a TrainConfig")
    return dataclasses.replace(cfg, preset=name)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device_kind: str) -> str:
    """"auto": bf16 on CUDA and on CPUs with native bf16 arithmetic, else fp32. On an AVX2-only
    CPU, bf16 autocast is emulated: the 4 x d192 model trained at under 420 tokens/s in bf16
    (not 20 steps of 8,192 tokens in 6.5 minutes), 2,240 in fp32, on one core of this AMD EPYC
    (AVX2, measured 2026-11-23)."""
    if dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.dtype must be auto, bf16 or fp32, not {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bf16" if device_kind == "cuda" or cpu_has_native_bf16() else "fp32"
