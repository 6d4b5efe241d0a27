"""Token shards: a buffered golf-shard writer, the training batch sampler and validation windows.

The sampler is stateless: the sequences of step s are a pure function of (seed, s, rank, world),
so resuming from a checkpoint needs only the step number, and 1 process and N processes see the
same global batch (rank r takes its slice of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmzip.data import open_shard, write_shard


class ShardWriter:
    """Collects token documents and writes `<prefix>_NNNNNN.bin` golf shards of `shard_tokens`."""

    def __init__(self, directory: Path, prefix: str, shard_tokens: int):
        self.directory, self.prefix, self.shard_tokens = Path(directory), prefix, shard_tokens
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.paths: list[Path] = []
        self.n_tokens = 0
        self.n_docs = 0

    def add(self, doc: np.ndarray) -> None:
        # documents may straddle shards (as in golf data): readers find them by their BOS
        doc = np.asarray(doc, dtype=np.uint16)
        self.n_docs += 1
        while doc.size:
            take = min(doc.size, self.shard_tokens - self.pending)
            self.parts.append(doc[:take])
            self.pending += take
            doc = doc[take:]
            if self.pending == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.directory / f"{self.prefix}_{len(self.paths):06d}.bin"
        self.n_tokens += write_shard(path, self.parts)
        self.paths.append(path)
        self.parts, self.pending = [], 0


class TokenSource:
    """Read-only view of shards as one token sequence split into windows of seq_len + 1 tokens.

    Window i of a shard is tokens[i*T : i*T + T + 1] (consecutive windows share one token, so
    every token but the first is a target exactly once). Windows never cross shards.
    """

    def __init__(self, paths: list[str | Path], seq_len: int):
        if not paths:
            raise ValueError("no shard files")
        self.seq_len = seq_len
        self.arrays = [open_shard(p) for p in paths]
        counts = [max(0, (a.size - 1) // seq_len) for a in self.arrays]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_windows = int(self.starts[-1])
        self.n_tokens = int(sum(a.size for a in self.arrays))
        if self.n_windows == 0:
            raise ValueError(f"shards hold {self.n_tokens} tokens: fewer than one window")

    def window(self, i: int) -> np.ndarray:
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        off = (i - int(self.starts[s])) * self.seq_len
        return self.arrays[s][off : off + self.seq_len + 1]

    def windows(self, idx: np.ndarray) -> np.ndarray:
        """[len(idx), T + 1] int64 token windows."""
        return np.stack([self.window(int(i)) for i in idx]).astype(np.int64)


class BatchSampler:
    """Global batch of step s = `global_seqs` windows taken in a seeded per-epoch permutation."""

    def __init__(self, source: TokenSource, global_seqs: int, seed: int):
        self.source, self.global_seqs, self.seed = source, global_seqs, seed
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._epoch, self._perm = epoch, rng.permutation(self.source.n_windows)
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        n = self.source.n_windows
        pos = step * self.global_seqs + np.arange(self.global_seqs, dtype=np.int64)
        out = np.empty(self.global_seqs, dtype=np.int64)
        for epoch in np.unique(pos // n):
            sel = pos // n == epoch
            out[sel] = self._perm_for(int(epoch))[pos[sel] % n]
        return out

    def local_batch(self, step: int, rank: int, world: int) -> np.ndarray:
        """[global_seqs / world, T + 1] windows of this rank at this step."""
        idx = self.indices(step)
        per = self.global_seqs // world
        return self.source.windows(idx[rank * per : (rank + 1) * per])

    def epoch_of(self, step: int) -> float:
        return step * self.global_seqs / self.source.n_windows


def val_stream(paths: list[str | Path], max_tokens: int) -> np.ndarray:
    """The first `max_tokens` validation tokens (0 = all), as int64, read shard by shard."""
    parts, total = [], 0
    for p in paths:
        a = open_shard(p)
        take = a.size if max_tokens <= 0 else min(a.size, max_tokens - total)
        parts.append(np.asarray(a[:take], dtype=np.int64))
        total += take
        if max_tokens > 0 and total >= max_tokens:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def eval_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, first_scored) per window of a sliding evaluation over n_tokens tokens.

    Window w covers tokens [start, start + T] (inputs start..start+T-1, targets start+1..start+T)
    and scores targets from `first_scored` on; every target 1..n-1 is scored exactly once, and all
    but the first window's targets see at least T - stride tokens of context. stride = T gives the
    plain non-overlapping evaluation of Parameter Golf.
    """
    t = seq_len
    if n_tokens < 2:
        return []
    if n_tokens <= t + 1:
        return [(0, 1)]
    out, scored = [], 1  # next target index not yet scored
    start = 0
    while scored < n_tokens:
        start = min(start, n_tokens - 1 - t)
        out.append((start, scored))
        scored = start + t + 1
        start += stride
    return out
