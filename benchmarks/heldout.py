"""Held-out English texts the project never trained or tuned on: the four English texts of the
Canterbury corpus, taken from the Brotli 1.1.0 source distribution on PyPI (its test data).

    python benchmarks/heldout.py                  # fetch once (cached), print the paths
    python benchmarks/compare.py --stem heldout $(python benchmarks/heldout.py)

| file | bytes | what |
|---|---|---|
| alice29.txt | 152,089 | Lewis Carroll, Alice's Adventures in Wonderland (novel) |
| asyoulik.txt | 125,179 | Shakespeare, As You Like It (play) |
| lcet10.txt | 426,754 | Project Gutenberg lecture notes (technical prose) |
| plrabn12.txt | 481,861 | Milton, Paradise Lost (verse) |

The sdist comes through `pip download` (the package registry is reachable where the wider
internet is not); every extracted file is checked against the SHA-256 below, so a changed
archive fails loudly instead of silently measuring something else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "brotli==1.1.0"
ARCHIVE = "Brotli-1.1.0.tar.gz"
MEMBER = "Brotli-1.1.0/tests/testdata/"
TEXTS = {  # name -> sha256 (the Canterbury corpus files, byte for byte)
    "alice29.txt": "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
    "asyoulik.txt": "eaa3526fe53859f34ecdf255712f9ecf0b2c903451d4755b2edaa2e2599cb0fc",
    "lcet10.txt": "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f",
    "plrabn12.txt": "07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c",
}
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmzip" / "heldout"


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fetch(dest: Path) -> list[Path]:
    """The four texts in dest, downloaded and checked on first use."""
    paths = [dest / name for name in TEXTS]
    if all(p.exists() and _sha256(p) == TEXTS[p.name] for p in paths):
        return paths
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-q", "-d", tmp, SDIST]  # fmt: skip
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            sys.exit(f"heldout: pip download {SDIST} failed: {last}")
        with tarfile.open(Path(tmp) / ARCHIVE) as tar:
            for name, want in TEXTS.items():
                data = tar.extractfile(MEMBER + name).read()
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    sys.exit(f"heldout: {name} from {ARCHIVE} has sha256 {got}, expected {want}")
                part = dest / (name + ".part")
                part.write_bytes(data)
                os.replace(part, dest / name)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache directory")
    print(" ".join(str(p) for p in fetch(ap.parse_args().dir)))


if __name__ == "__main__":
    main()
