"""Checkpoints: one `ckpt.pt` per run directory, replaced atomically (temp file + os.replace).

The payload holds only tensors, numbers, strings, lists and dicts (the config as a dict), so it
loads with `weights_only=True`: no pickled code runs when a checkpoint is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    ck = torch.load(path, map_location=map_location, weights_only=True)
    if ck.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ck.get('version')} is not supported")
    return ck
