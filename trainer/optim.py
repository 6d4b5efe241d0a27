"""Muon for 2-D block matrices, Adam for the embedding and scalars (Parameter Golf baseline).

Muon (Keller Jordan): SGD momentum whose update is orthogonalized by a quintic Newton-Schulz
iteration, scaled by sqrt(max(1, rows / cols)). Every process computes the same update from the
same all-reduced gradient, so no parameter broadcast is needed under DDP.
"""

from __future__ import annotations

import torch

from lmzip.model import GPT


def zeropower_via_newtonschulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T (coefficients from modded-nanogpt), in bfloat16."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        backend_steps: int = 5,
    ):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "nesterov": nesterov, "backend_steps": backend_steps}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mom).add_(g)
                g = g.add(buf, alpha=mom) if group["nesterov"] else buf
                u = zeropower_via_newtonschulz5(g, steps=group["backend_steps"])
                u = u.to(p.dtype) * max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(u, alpha=-lr)


def build_optimizers(model: GPT, tcfg) -> list[torch.optim.Optimizer]:
    """[Muon(block matrices), Adam(embedding), Adam(scalars)]; each group keeps its `base_lr`."""
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim == 2]
    scalars = [p for n, p in model.named_parameters() if p.ndim < 2 or n.startswith("skip_weights")]
    embed = [model.tok_emb.weight]
    covered = {id(p) for p in matrices + scalars + embed}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise RuntimeError(f"parameters without an optimizer: {missing}")
    betas = (tcfg.adam_beta1, tcfg.adam_beta2)
    opts = [
        Muon(
            matrices,
            lr=tcfg.matrix_lr,
            momentum=tcfg.muon_momentum,
            weight_decay=tcfg.muon_weight_decay,
        ),
        torch.optim.Adam(embed, lr=tcfg.embed_lr, betas=betas, eps=1e-8, fused=False),
        torch.optim.Adam(scalars, lr=tcfg.scalar_lr, betas=betas, eps=1e-8, fused=False),
    ]
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts
