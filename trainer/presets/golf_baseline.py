"""golf-baseline: the Parameter Golf baseline recipe (openai/parameter-golf train_gpt.py).

9 layers d512, 8 heads / 4 KV heads, MLP 2x relu^2, vocab 1024, seq 1024, tied embeddings,
softcap 30, Muon lr 0.04 momentum 0.95 (warmup from 0.85 over 500 steps) + Adam (tied embedding
lr 0.05, scalars 0.04), 524,288 tokens per step, 10 minutes of wallclock with wallclock-aware
warmdown. Run on 8xH100 (`torchrun --nproc_per_node=8`); fewer GPUs accumulate gradients to the
same global batch (same experiment, proportionally longer: set train.max_seconds accordingly).

Expected (8xH100, golf sp1024 FineWeb shards): the wallclock stops it after roughly 13-14k steps
(about 44 ms/step); the golf baseline reports 1.2244 val bpb after its int8 round trip. This
engine stores blocks as int6 (no QAT in this recipe), so expect a few thousandths worse after
quantization; the container is about 12 MB, under the 16,000,000-byte limit.
"""

from lmzip.model import ModelConfig
from trainer.config import DataConfig, EvalConfig, ExportConfig, TrainConfig, TrainSettings

CONFIG = TrainConfig(
    model=ModelConfig(
        vocab_size=1024, n_layer=9, d_model=512, n_head=8, n_kv_head=4, mlp_mult=2, seq_len=1024
    ),
    data=DataConfig(val_fraction=0.005),
    train=TrainSettings(
        global_batch_tokens=524_288,
        micro_batch_seqs=64,
        max_seconds=600,
        warmdown_frac=0.2,
        qat_frac=0.0,
        muon_momentum=0.95,
        muon_momentum_warmup_start=0.85,
        muon_momentum_warmup_steps=500,
        matrix_lr=0.04,
        embed_lr=0.05,
        scalar_lr=0.04,
        dtype="bf16",
        compile="auto",
        compile_warmup_steps=20,
        log_every=50,
        val_every_seconds=0,
        ckpt_every_seconds=120,
    ),
    eval=EvalConfig(max_tokens=2_000_000, batch_seqs=64, final_max_tokens=0, final_stride=1024),
    export=ExportConfig(golf=True),
)
