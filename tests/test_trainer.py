"""trainer: config overrides, prepare/shards, tiny runs, resume, 2-process DDP (gloo) parity.

All runs are micro models (~30k parameters, 1 thread, fp32) on a synthetic corpus with a
320-token tokenizer trained here, so the file takes seconds and needs no network or GPU.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmzip import container
from lmzip.data import open_shard, write_shard
from lmzip.errors import LmzipError
from lmzip.tokenizer import Tokenizer, train_tokenizer
from trainer.config import apply_overrides, load_preset, preset_names
from trainer.prepare import is_val_doc, prepare
from trainer.shards import BatchSampler, TokenSource, eval_windows
from trainer.train import run

REPO = Path(__file__).resolve().parent.parent

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "also",
    "have",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "been",
    "more",
    "two",
    "first",
    "year",
    "would",
    "about",
    "people",
    "other",
    "there",
    "when",
    "into",
    "time",
    "over",
    "only",
    "some",
    "most",
    "such",
    "city",
    "state",
]


def synthetic_text(n_docs: int, seed: int = 0) -> bytes:
    """Sentences from a fixed bigram-ish walk: learnable, so the loss clearly falls."""
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, len(WORDS), size=(len(WORDS), 3))
    out = []
    for _ in range(n_docs):
        w, sents = int(rng.integers(len(WORDS))), []
        for _ in range(int(rng.integers(4, 9))):
            words = []
            for _ in range(int(rng.integers(5, 12))):
                words.append(WORDS[w])
                w = int(nxt[w, rng.integers(3)])
            sents.append(" ".join(words).capitalize() + ".")
        out.append(" ".join(sents) + "\n\n")
    return "".join(out).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_bytes(synthetic_text(300))
    tok = train_tokenizer([d / "train.txt"], 320, sample_bytes=1 << 20, out_path=d / "tok.model")
    assert tok.vocab_size == 320
    return d


def micro_config(corpus: Path, cache: Path, *sets: str):
    torch.set_num_threads(1)
    return apply_overrides(
        load_preset("tiny"),
        [
            f"data.tokenizer={corpus / 'tok.model'}",
            f"data.cache_dir={cache}",
            "data.doc_bytes=1024",
            "data.val_fraction=0.1",
            "model.vocab_size=320",
            "model.d_model=32",
            "model.seq_len=32",
            "train.global_batch_tokens=256",
            "train.micro_batch_seqs=4",
            "train.threads=1",
            "train.log_every=1000",
            "eval.max_tokens=2048",
            "eval.final_max_tokens=2048",
            *sets,
        ],
    )


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# -- config -----------------------------------------------------------------------------------


def test_presets_load_and_validate():
    assert set(preset_names()) >= {"tiny", "cpu", "golf-baseline", "golf-plus"}
    for name in preset_names():
        cfg = load_preset(name)
        cfg.model.validate()
        assert cfg.preset == name
        assert cfg.train.global_batch_tokens % cfg.model.seq_len == 0
    golf = load_preset("golf-baseline")
    assert (golf.model.n_layer, golf.model.d_model, golf.train.global_batch_tokens) == (
        9,
        512,
        524_288,
    )
    assert golf.export.golf and load_preset("golf-plus").export.golf


def test_overrides_are_type_checked():
    cfg = load_preset("tiny")
    new = apply_overrides(
        cfg, ["train.max_seconds=5400", "model.n_layer=3", "train.dtype=bf16", "export.golf=true"]
    )
    assert new.train.max_seconds == 5400.0 and new.model.n_layer == 3
    assert new.train.dtype == "bf16" and new.export.golf is True
    assert cfg.model.n_layer == 2  # frozen: the preset object is unchanged
    with pytest.raises(ValueError, match="unknown key 'n_layers'"):
        apply_overrides(cfg, ["model.n_layers=3"])
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        apply_overrides(cfg, ["nope.x=1"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(cfg, ["model.n_layer=3.5"])
    with pytest.raises(ValueError, match="expected a number"):
        apply_overrides(cfg, ["train.matrix_lr=fast"])
    with pytest.raises(ValueError, match="expected a boolean"):
        apply_overrides(cfg, ["export.golf=maybe"])
    with pytest.raises(ValueError, match="is a section"):
        apply_overrides(cfg, ["model=3"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["model.n_layer"])
    with pytest.raises(ValueError, match="invalid ModelConfig"):
        apply_overrides(cfg, ["model.n_head=3"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("huge")


def test_cli_usage_errors_exit_2():
    from click.testing import CliRunner

    from trainer.__main__ import main

    res = CliRunner().invoke(
        main, ["--preset", "tiny", "--data", __file__, "--out", "x.lmzm", "--set", "train.bogus=1"]
    )
    assert res.exit_code == 2 and "unknown key 'bogus'" in res.output


# -- data ---------------------------------------------------------------------------------------


def test_eval_windows_score_every_target_once():
    for n, t, s in [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3), (57, 16, 4)]:
        seen = []
        for start, first in eval_windows(n, t, s):
            assert 0 <= start and start + min(t, n - 1) <= n - 1
            assert start + 1 <= first
            seen.extend(range(first, start + min(t, n - 1) + 1))
        assert seen == list(range(1, n)), (n, t, s)


def test_split_is_by_document_hash():
    docs = [f"doc {i}".encode() for i in range(4000)]
    val = [d for d in docs if is_val_doc(d, 0.05, 0)]
    assert 120 < len(val) < 280
    assert val == [d for d in docs if is_val_doc(d, 0.05, 0)]  # a pure function of the bytes
    assert val != [d for d in docs if is_val_doc(d, 0.05, 1)]  # the seed picks another split


def test_prepare_writes_golf_shards_without_leaks(corpus, tmp_path):
    cfg = micro_config(corpus, tmp_path, "data.shard_tokens=5000")
    prep = prepare(cfg, [corpus / "train.txt"], tmp_path)
    assert len(prep.train) > 1 and prep.val
    tok = Tokenizer.load(prep.tokenizer_path)
    text = (corpus / "train.txt").read_bytes()

    def docs(paths):
        toks = np.concatenate([np.asarray(open_shard(p)) for p in paths]).astype(np.int64)
        assert toks[0] == tok.bos_id
        cut = np.flatnonzero(toks == tok.bos_id).tolist() + [toks.size]
        return [tok.decode(toks[a + 1 : b]) for a, b in itertools.pairwise(cut)]

    train, val = docs(prep.train), docs(prep.val)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(d for d in _split(text, 1024))
    again = prepare(cfg, [corpus / "train.txt"], tmp_path)  # cached: same files, no rewrite
    assert again == prep


def _split(text: bytes, doc_bytes: int):
    import io

    from lmzip.data import split_text

    return list(split_text(io.BytesIO(text), doc_bytes))


def test_sampler_is_stateless_and_rank_sliced(corpus, tmp_path):
    cfg = micro_config(corpus, tmp_path)
    prep = prepare(cfg, [corpus / "train.txt"], tmp_path)
    src = TokenSource(prep.train, 32)
    s = BatchSampler(src, 8, seed=3)
    full = s.local_batch(5, 0, 1)
    halves = np.concatenate([BatchSampler(src, 8, 3).local_batch(5, r, 2) for r in (0, 1)])
    np.testing.assert_array_equal(full, halves)
    assert full.shape == (8, 33)
    far = s.indices(10 * src.n_windows // 8)  # later epochs are new permutations
    assert np.unique(far).size == 8


# -- training -----------------------------------------------------------------------------------


def test_tiny_run_loss_falls_exports_and_round_trips(corpus, tmp_path):
    cfg = micro_config(corpus, tmp_path, "train.max_steps=30")
    out = tmp_path / "m.lmzm"
    res = run(cfg, [str(corpus / "train.txt")], str(out), str(tmp_path / "run"))
    ls = losses(tmp_path / "run")
    assert len(ls) == 30
    assert np.mean([ls[i] for i in range(26, 31)]) < ls[1] - 1.0
    assert res["export"]["bytes"] == out.stat().st_size
    assert res["export"]["bpb_quant"] < 4.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 320
    assert "torch" in json.loads((tmp_path / "run" / "versions.json").read_text())

    from click.testing import CliRunner

    from lmzip.cli import main as lmzip_main

    src = tmp_path / "s.txt"
    src.write_bytes(synthetic_text(3, seed=9))
    r = CliRunner().invoke(
        lmzip_main, ["compress", "-q", "-m", str(out), str(src), "-o", str(tmp_path / "s.lmz")]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        lmzip_main,
        [
            "decompress",
            "-q",
            "-m",
            str(out),
            str(tmp_path / "s.lmz"),
            "-o",
            str(tmp_path / "s.out"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.out").read_bytes() == src.read_bytes()

    # a golf model at or over the limit is refused and nothing is written
    from trainer.checkpoint import load_checkpoint, save_checkpoint
    from trainer.export import export_checkpoint

    ck = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    ck["config"]["export"] = {"golf": True, "max_bytes": 1000}
    save_checkpoint(tmp_path / "golf.pt", ck)
    with pytest.raises(LmzipError, match="under 1,000 bytes"):
        export_checkpoint(tmp_path / "golf.pt", tmp_path / "g.lmzm", val_tokens=0)
    assert not (tmp_path / "g.lmzm").exists()

    # a note (how a resumed run went) travels into the provenance
    export_checkpoint(tmp_path / "run" / "ckpt.pt", tmp_path / "n.lmzm", val_tokens=0,
                      note="resumed once")  # fmt: skip
    assert container.load_model(tmp_path / "n.lmzm").provenance["note"] == "resumed once"


def test_resume_continues_the_same_run(corpus, tmp_path):
    sets = ("train.warmdown_frac=0", "train.qat_frac=0")
    data = [str(corpus / "train.txt")]
    run(micro_config(corpus, tmp_path, "train.max_steps=8", *sets), data, None, str(tmp_path / "a"))
    run(micro_config(corpus, tmp_path, "train.max_steps=5", *sets), data, None, str(tmp_path / "b"))
    res = run(
        micro_config(corpus, tmp_path, "train.max_steps=8", *sets), data, None, str(tmp_path / "b")
    )
    assert res["step"] == 8
    # untimed warmup steps (torch.compile's) restore the weights: the run is unchanged
    run(
        micro_config(corpus, tmp_path, "train.max_steps=8", "train.compile_warmup_steps=3", *sets),
        data,
        None,
        str(tmp_path / "c"),
    )
    a, b, c = losses(tmp_path / "a"), losses(tmp_path / "b"), losses(tmp_path / "c")
    assert sorted(b) == list(range(1, 9))
    for k in range(1, 9):
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-6)
        assert c[k] == pytest.approx(a[k], rel=1e-6, abs=1e-6)


def test_hand_made_golf_shards_train(corpus, tmp_path):
    tok = Tokenizer.load(corpus / "tok.model")
    text = synthetic_text(60, seed=4)
    docs = [np.concatenate([[tok.bos_id], tok.encode(d)]) for d in _split(text, 1024)]
    write_shard(tmp_path / "fineweb_train_000000.bin", np.concatenate(docs[:-5]))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.concatenate(docs[-5:]))
    cfg = micro_config(corpus, tmp_path, "train.max_steps=3")
    data = [str(tmp_path / "fineweb_train_000000.bin"), str(tmp_path / "fineweb_val_000000.bin")]
    res = run(cfg, data, None, str(tmp_path / "run"))
    assert res["step"] == 3 and res["val"]["bytes"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process(corpus, tmp_path):
    sets = ["train.max_steps=6", "train.qat_frac=0.34"]
    data = [str(corpus / "train.txt")]
    cfg = micro_config(corpus, tmp_path, *sets)
    run(cfg, data, None, str(tmp_path / "one"))  # also prepares the shared cache
    args = [
        sys.executable,
        "-m",
        "trainer",
        "--preset",
        "tiny",
        "--data",
        data[0],
        "--run-dir",
        str(tmp_path / "two"),
    ]
    for kv in [
        f"data.tokenizer={corpus / 'tok.model'}",
        f"data.cache_dir={tmp_path}",
        "data.doc_bytes=1024",
        "data.val_fraction=0.1",
        "model.vocab_size=320",
        "model.d_model=32",
        "model.seq_len=32",
        "train.global_batch_tokens=256",
        "train.micro_batch_seqs=4",
        "train.threads=1",
        "eval.max_tokens=2048",
        *sets,
    ]:
        args += ["--set", kv]
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        procs.append(
            subprocess.Popen(
                args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "2 procs x 1 accum x 4 seqs" in outs[0]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 7))
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-4, abs=1e-5), (k, one, two)


def test_dtype_auto_is_bf16_only_where_it_is_native(monkeypatch):
    from trainer import config

    assert config.resolve_dtype("fp32", "cuda") == "fp32"
    assert config.resolve_dtype("bf16", "cpu") == "bf16"
    assert config.resolve_dtype("auto", "cuda") == "bf16"
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    assert config.resolve_dtype("auto", "cpu") == "fp32"  # emulated bf16 is ~5x slower
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    assert config.resolve_dtype("auto", "cpu") == "bf16"
    with pytest.raises(ValueError, match="train.dtype"):
        config.resolve_dtype("fp16", "cpu")
