"""cpu: the best model a 2-core AVX512-BF16 CPU trains in about two hours (the shipped default).

6 layers, d 256, MLP 3x (3.8M parameters, ~2.9 MB as int6/int8), context 512, bf16 autocast where
the CPU has it natively (fp32 otherwise: emulated bf16 is ~5x slower),
16 sequences (8,192 tokens) per step, QAT over the last 30 % of the wallclock budget.
Measured on the project machine (2 threads): see trainer/README.md for throughput and bpb.
"""

from lmzip.model import ModelConfig
from trainer.config import DataConfig, EvalConfig, TrainConfig, TrainSettings

CONFIG = TrainConfig(
    model=ModelConfig(
        vocab_size=1024, n_layer=6, d_model=256, n_head=4, n_kv_head=2, mlp_mult=3, seq_len=512
    ),
    data=DataConfig(tokenizer_sample_bytes=50_000_000, doc_bytes=65536, val_fraction=0.005),
    train=TrainSettings(
        global_batch_tokens=8192,
        micro_batch_seqs=8,
        max_seconds=7200,
        warmup_steps=20,
        warmdown_frac=0.25,
        qat_frac=0.3,
        muon_momentum_warmup_steps=300,
        dtype="auto",
        threads=2,
        log_every=20,
        val_every_seconds=900,
        ckpt_every_seconds=300,
    ),
    eval=EvalConfig(max_tokens=131_072, batch_seqs=8, final_max_tokens=524_288),
)
