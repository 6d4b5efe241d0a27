"""Prepare: corpus files -> tokenizer + golf-format train/val shards in a cache directory.

Documents come from `lmzip.data` (text cut at blank lines, .jsonl/.parquet records, golf shard
documents). Each document is encoded, prefixed with BOS and routed to `train` or `val` by a keyed
hash of its bytes: the split depends on nothing but the document and `data.split_seed`, so a
document can never be in both, whatever order or process reads it. Golf shards named `*_val_*` /
`*_train_*` (the challenge's own data) are used in place without copying.

    python -m trainer.prepare --data corpus.txt.zst --cache-dir data/shards [--tokenizer sp.model]

The cache directory is keyed by a hash of the inputs (path, size, mtime), the tokenizer and the
split settings; `meta.json` is written last, so a prepared cache is complete or absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from lmzip.data import TEXT_SUFFIXES, _inner_suffix, iter_documents, iter_shard_documents
from lmzip.errors import LmzipError
from lmzip.tokenizer import Tokenizer, train_tokenizer
from trainer.config import TrainConfig
from trainer.shards import ShardWriter

PREPARE_VERSION = 1  # bump when the document or split rule changes (invalidates caches)


@dataclass(frozen=True)
class Prepared:
    tokenizer_path: str
    train: list[str]
    val: list[str]
    n_train_tokens: int
    n_val_tokens: int
    directory: str

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)


def is_val_doc(doc: bytes, val_fraction: float, seed: int) -> bool:
    """True for the ~val_fraction of documents whose keyed hash falls below the threshold."""
    h = hashlib.blake2b(doc, digest_size=8, key=struct.pack("<Q", seed)).digest()
    return int.from_bytes(h, "little") < val_fraction * 2.0**64


def _file_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _golf_split(paths: list[Path]) -> tuple[list[Path], list[Path]] | None:
    """(train, val) if every input is a golf shard whose name says train or val, else None."""
    if not all(p.suffix == ".bin" for p in paths):
        return None
    val = [p for p in paths if "_val_" in p.name or p.name.startswith("val_")]
    train = [p for p in paths if p not in val]
    return (train, val) if train and val else None


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def resolve_tokenizer(cfg: TrainConfig, inputs: list[Path], cache: Path) -> Path:
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        if not path.is_file():
            raise LmzipError(f"tokenizer not found: {path}")
        return path
    if any(p.suffix == ".bin" for p in inputs):
        raise LmzipError("golf .bin shards are already tokenized: pass --tokenizer (e.g. sp1024)")
    key = hashlib.sha256(
        json.dumps(
            [[_file_key(p) for p in inputs], cfg.model.vocab_size, cfg.data.tokenizer_sample_bytes]
        ).encode()
    ).hexdigest()[:12]
    out = cache / f"tok{cfg.model.vocab_size}-{key}.model"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    _log(f"training a {cfg.model.vocab_size}-token tokenizer -> {out}")
    texts = [p for p in inputs if _inner_suffix(p) in TEXT_SUFFIXES or _inner_suffix(p) == ""]
    tmp = None
    if len(texts) != len(inputs):
        # jsonl/parquet: write a text sample (head of each input) for sentencepiece
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".txt")
        share = cfg.data.tokenizer_sample_bytes // len(inputs)
        with os.fdopen(fd, "wb") as f:
            for p in inputs:
                n = 0
                for doc in iter_documents(p, cfg.data.doc_bytes, cfg.data.text_field):
                    f.write(doc.rstrip(b"\n") + b"\n")
                    n += len(doc)
                    if n >= share:
                        break
        texts = [Path(tmp)]
    try:
        train_tokenizer(
            texts, cfg.model.vocab_size, sample_bytes=cfg.data.tokenizer_sample_bytes, out_path=out
        )
    finally:
        if tmp:
            os.unlink(tmp)
    return out


def prepare(
    cfg: TrainConfig, data: list[str | os.PathLike], cache_dir: str | os.PathLike
) -> Prepared:
    """Tokenize `data` into shards under `cache_dir` (or reuse them); returns where they are."""
    inputs = [Path(p) for p in data]
    for p in inputs:
        if not p.is_file():
            raise LmzipError(f"no such data file: {p}")
    cache = Path(cache_dir)
    tok_path = resolve_tokenizer(cfg, inputs, cache)
    tok = Tokenizer.load(tok_path)
    if tok.vocab_size != cfg.model.vocab_size:
        raise LmzipError(
            f"tokenizer has {tok.vocab_size} tokens but model.vocab_size is {cfg.model.vocab_size}"
        )
    golf = _golf_split(inputs)
    if golf is not None:
        train, val = golf
        return Prepared(str(tok_path), [str(p) for p in train], [str(p) for p in val], -1, -1, "")

    d = cfg.data
    key_src = [
        PREPARE_VERSION,
        [_file_key(p) for p in inputs],
        hashlib.sha256(tok.model_bytes).hexdigest(),
        d.doc_bytes,
        d.val_fraction,
        d.split_seed,
        d.shard_tokens,
        d.text_field,
    ]
    key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:12]
    stem = inputs[0].name.split(".")[0]
    out = cache / f"{stem}-v{tok.vocab_size}-{key}"
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return Prepared(
            str(tok_path),
            [str(out / f) for f in meta["train"]],
            [str(out / f) for f in meta["val"]],
            meta["n_train_tokens"],
            meta["n_val_tokens"],
            str(out),
        )

    out.mkdir(parents=True, exist_ok=True)
    _log(f"tokenizing {len(inputs)} file(s) -> {out}")
    train_w = ShardWriter(out, "train", d.shard_tokens)
    val_w = ShardWriter(out, "val", d.shard_tokens)
    bos = np.array([tok.bos_id], dtype=np.int32)
    t0, n_bytes = time.time(), 0
    for p in inputs:
        if p.suffix == ".bin":
            for doc in iter_shard_documents(p, tok.bos_id):
                body = doc if doc[0] == tok.bos_id else np.concatenate([bos, doc])
                to_val = is_val_doc(body.astype("<u2").tobytes(), d.val_fraction, d.split_seed)
                (val_w if to_val else train_w).add(body)
            continue
        for doc in iter_documents(p, d.doc_bytes, d.text_field):
            w = val_w if is_val_doc(doc, d.val_fraction, d.split_seed) else train_w
            w.add(np.concatenate([bos, tok.encode(doc)]))
            n_bytes += len(doc)
            if train_w.n_docs % 200 == 0 and w is train_w:
                rate = n_bytes / max(time.time() - t0, 1e-9) / 1e6
                _log(f"{n_bytes / 1e6:.0f} MB, {train_w.n_docs} docs, {rate:.1f} MB/s")
    train_w.flush()
    val_w.flush()
    if not val_w.paths or not train_w.paths:
        which = "validation" if not val_w.paths else "training"
        raise LmzipError(
            f"no {which} documents: adjust data.val_fraction or data.doc_bytes "
            f"({train_w.n_docs} train / {val_w.n_docs} val documents)"
        )
    meta = {
        "prepare_version": PREPARE_VERSION,
        "inputs": [str(p) for p in inputs],
        "tokenizer": str(tok_path),
        "tokenizer_sha256": key_src[2],
        "train": [p.name for p in train_w.paths],
        "val": [p.name for p in val_w.paths],
        "n_train_tokens": train_w.n_tokens,
        "n_val_tokens": val_w.n_tokens,
        "n_train_docs": train_w.n_docs,
        "n_val_docs": val_w.n_docs,
        "doc_bytes": d.doc_bytes,
        "val_fraction": d.val_fraction,
        "split_seed": d.split_seed,
    }
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    _log(
        f"done in {time.time() - t0:.0f}s: {train_w.n_tokens:,} train tokens "
        f"({train_w.n_docs} docs), {val_w.n_tokens:,} val tokens ({val_w.n_docs} docs)"
    )
    return Prepared(
        str(tok_path),
        [str(p) for p in train_w.paths],
        [str(p) for p in val_w.paths],
        train_w.n_tokens,
        val_w.n_tokens,
        str(out),
    )


@click.command()
@click.option("--preset", default="cpu", show_default=True, help="preset whose data settings apply")
@click.option("--data", "data", multiple=True, required=True, help="corpus file (repeat)")
@click.option("--cache-dir", required=True, type=click.Path(file_okay=False))
@click.option("--tokenizer", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def main(preset, data, cache_dir, tokenizer, overrides):
    """Tokenize corpora into golf-format train/val shards (what training does first, cached).

    Example: python -m trainer.prepare --data corpus.txt.zst --cache-dir data/shards
    """
    from trainer.config import apply_overrides, load_preset

    sets = list(overrides) + ([f"data.tokenizer={tokenizer}"] if tokenizer else [])
    try:
        cfg = apply_overrides(load_preset(preset), sets)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        p = prepare(cfg, list(data), cache_dir)
    except LmzipError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(dataclasses.asdict(p), indent=1))


if __name__ == "__main__":
    main()
