"""Shared fixtures: a small tokenizer and tiny models built in seconds, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
LEE = CORPORA / "lee_news.txt.zst"


def read_corpus(name: str, limit: int | None = None) -> bytes:
    import zstandard

    path = CORPORA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read(limit or -1)
    return data


@pytest.fixture(scope="session")
def tok_bytes() -> bytes:
    """A 512-piece BPE tokenizer trained on 300 KB of news text (about a second)."""
    from lmzip.tokenizer import train_tokenizer

    if not LEE.exists():
        pytest.skip("shared corpora not available")
    return train_tokenizer([LEE], 512, sample_bytes=300_000).model_bytes


def random_model_file(tok: bytes, seed: int = 0, **cfg):
    """A model with random (not zero) weights, so every engine path carries signal."""
    from lmzip.export import model_file_from_gpt
    from lmzip.model import GPT, ModelConfig

    torch.manual_seed(seed)
    base = dict(vocab_size=512, n_layer=3, d_model=64, n_head=4, n_kv_head=2, mlp_mult=2,
                seq_len=48)  # fmt: skip
    base.update(cfg)
    model = GPT(ModelConfig(**base))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif "gain" in name:
                p.uniform_(0.5, 3.0)
            else:
                p.uniform_(0.3, 1.5)
    return model_file_from_gpt(model, tok, {"data": "random weights (tests)"})


@pytest.fixture(scope="session")
def tiny_model_path(tok_bytes, tmp_path_factory) -> str:
    from lmzip.container import save_model

    path = tmp_path_factory.mktemp("models") / "tiny.lmzm"
    save_model(random_model_file(tok_bytes), path, compress=False)
    return str(path)
