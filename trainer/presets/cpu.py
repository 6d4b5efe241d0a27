"""cpu: the shipped default model's recipe, a model a 2-core CPU trains in one to two hours.

4 layers, d 192, MLP 3x (1.5M parameters, ~1.1 MB as int6/int8), context 512: the size that codes
text at 20 KB/s on a 2-core CPU (README "The shipped models"; the shipped `large` model is this
preset with model.n_layer=6 model.d_model=256). bf16 autocast where the CPU has it natively
(fp32 otherwise: emulated bf16 is ~5x slower),
16 sequences (8,192 tokens) per step, QAT over the last 30 % of the wallclock budget.
Measured on the project machine (2 threads): see trainer/README.md for throughput and bpb.
"""

from lmzip.model import ModelConfig
from trainer.config import DataConfig, EvalConfig, TrainConfig, TrainSettings

CONFIG = TrainConfig(
    model=ModelConfig(
        vocab_size=1024, n_layer=4, d_model=192, n_head=4, n_kv_head=2, mlp_mult=3, seq_len=512
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
