"""CUDA engine against the CPU engine: identical tables (run with `pytest -m gpu` on a GPU)."""

from __future__ import annotations

import pytest
import torch

from lmzip.engine import Engine

from conftest import random_model_file

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tables_equal_cpu_tables(tok_bytes):
    mf = random_model_file(tok_bytes, seed=21)
    cpu, gpu = Engine(mf), Engine(mf, device="cuda")
    w = torch.randint(4, cpu.vocab_size, (4, cpu.window))
    w[:, 0] = 1
    assert torch.equal(gpu.forward(w).cpu(), cpu.forward(w))
    sc, sg = cpu.new_state(4), gpu.new_state(4)
    for i in range(cpu.window):
        pos = torch.full((4,), i)
        assert torch.equal(gpu.step(sg, w[:, i], pos).cpu(), cpu.step(sc, w[:, i], pos))
