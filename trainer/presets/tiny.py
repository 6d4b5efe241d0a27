"""tiny: a 2-layer d64 model that trains on CPU in seconds (tests, smoke runs).

Expected (lee_news, own tokenizer): loss 6.93 (ln 1024) -> ~4.7 in 40 steps, val bpb ~2.44,
~10 s on 2 CPU cores; the numbers are irrelevant, that it runs end to end is the point.
"""

from lmzip.model import ModelConfig
from trainer.config import DataConfig, EvalConfig, TrainConfig, TrainSettings

CONFIG = TrainConfig(
    model=ModelConfig(
        vocab_size=1024, n_layer=2, d_model=64, n_head=2, n_kv_head=1, mlp_mult=2, seq_len=64
    ),
    data=DataConfig(tokenizer_sample_bytes=2_000_000, doc_bytes=4096, val_fraction=0.05),
    train=TrainSettings(
        global_batch_tokens=2048,
        max_steps=40,
        max_seconds=0,
        warmdown_frac=0.3,
        qat_frac=0.25,
        muon_momentum_warmup_steps=10,
        embed_lr=0.05,
        dtype="fp32",
        log_every=5,
        val_every_seconds=0,
        ckpt_every_seconds=0,
    ),
    eval=EvalConfig(max_tokens=16_384, batch_seqs=32, final_max_tokens=16_384),
)
