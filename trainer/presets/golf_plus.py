"""golf-plus: golf records' techniques that fit the exact integer engine.

Baseline plus: MLP 3x on 8 layers (the width paid for by int6 blocks: 9 layers at 3x would be
about 16.3 MB without entropy coding of the weights), int6 QAT on block matrices with
int8 embeddings over the last 40 % of the budget, Muon decoupled weight decay, an EMA of the
weights exported instead of the last iterate, and a sliding-window final evaluation (stride 256
over 1024-token windows, so nearly every token is scored with >= 768 tokens of context).

Expected (8xH100, 10 minutes, golf sp1024 data): about 1.17-1.19 val bpb sliding-window after
quantization (records with these techniques plus larger vocabularies and GPTQ reach ~1.06-1.12);
container about 14.5 MB, checked against the 16,000,000-byte limit at export.
"""

import dataclasses

from lmzip.model import ModelConfig
from trainer.config import EvalConfig
from trainer.presets.golf_baseline import CONFIG as BASE

CONFIG = dataclasses.replace(
    BASE,
    model=ModelConfig(
        vocab_size=1024, n_layer=8, d_model=512, n_head=8, n_kv_head=4, mlp_mult=3, seq_len=1024
    ),
    train=dataclasses.replace(
        BASE.train, qat_frac=0.4, muon_weight_decay=0.04, ema_decay=0.997, warmdown_frac=0.3
    ),
    eval=EvalConfig(max_tokens=2_000_000, batch_seqs=64, final_max_tokens=0, final_stride=256),
)
