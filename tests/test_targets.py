"""The numerics do not depend on the CPU numba compiles for (format_spec/numerics.md).

This machine's build uses the fastest kernels its CPU has (AVX512, VNNI, AMX tiles); other CPUs
compile other forms of the same kernels, or none where they lack the instructions. A second
build for a baseline x86-64 CPU, in a process of its own with its own numba cache, must compile
every path the compressor takes and give the same bytes.
"""

import os
import platform
import subprocess
import sys

import pytest
from conftest import read_corpus


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
def test_baseline_x86_build_gives_the_same_bytes(tmp_path):
    """With numba compiling for a baseline x86-64 CPU (no AVX2, AVX512, VNNI or AMX: every
    kernel in its portable form, and the fast kernels that need those instructions dropped
    before typing), the CLI compresses a text to the same bytes as this machine's build and
    decodes this machine's file (about a minute: the baseline build compiles everything)."""
    text = read_corpus("lee_news.txt.zst", 6000)
    src = tmp_path / "a.txt"
    src.write_bytes(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    base = dict(env, NUMBA_CPU_NAME="x86-64", NUMBA_CACHE_DIR=str(tmp_path / "numba"))

    def lmzip(environ, *args):
        r = subprocess.run([sys.executable, "-m", "lmzip", *args], env=environ,
                           capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr

    lmzip(env, "compress", "-q", str(src), "-o", str(tmp_path / "host.lmz"))
    lmzip(base, "compress", "-q", str(src), "-o", str(tmp_path / "base.lmz"))
    assert (tmp_path / "base.lmz").read_bytes() == (tmp_path / "host.lmz").read_bytes()
    lmzip(base, "decompress", "-q", str(tmp_path / "host.lmz"), "-o", str(tmp_path / "b.out"))
    assert (tmp_path / "b.out").read_bytes() == text
    probe = "from lmzip import simd; print(simd.HAS_AVX2, simd.HAS_VNNI512, simd.HAS_AMX)"
    r = subprocess.run([sys.executable, "-c", probe], env=base, capture_output=True, text=True,
                       check=True)  # fmt: skip
    assert r.stdout.split() == ["False", "False", "False"]
