"""lmzip.cpu_env: the CLI's numba code-generation setting (512-bit vectors on AVX512 hosts)."""

import os
import subprocess
import sys

import llvmlite.binding as llb

from lmzip import cpu_env

HOST = llb.get_host_cpu_features().flatten()
AVX512 = "+avx512bw" in HOST.split(",")


def test_wide_vectors_only_before_numba_and_without_a_users_target(monkeypatch):
    """Set where numba is not loaded and the user named no target: the host's features with
    LLVM's 256-bit preference off, on AVX512BW hosts only; never where numba is loaded (it
    has read its settings) or where NUMBA_CPU_NAME / NUMBA_CPU_FEATURES are the user's."""
    import numba  # noqa: F401  (loaded: nothing may change)

    env = {}
    assert not cpu_env.prefer_512_bit_vectors(env) and env == {}
    monkeypatch.delitem(sys.modules, "numba")
    for mine in ({"NUMBA_CPU_NAME": "haswell"}, {"NUMBA_CPU_FEATURES": "+avx2"}):
        env = dict(mine)
        assert not cpu_env.prefer_512_bit_vectors(env) and env == mine
    env = {}
    assert cpu_env.prefer_512_bit_vectors(env) == AVX512
    assert env == ({"NUMBA_CPU_FEATURES": HOST + cpu_env.WIDE_VECTORS} if AVX512 else {})


def test_the_command_line_sets_it_before_numba_loads():
    """Importing the CLI (python -m lmzip) sets the features on AVX512 hosts, and numba then
    compiles with them; LLVM recognizes every feature named (it warns on stderr otherwise)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    code = ("import os, lmzip.cli, numba.core.config as c; from lmzip import rowops;"
            "print(os.environ.get('NUMBA_CPU_FEATURES')); print(c.CPU_FEATURES);"
            "import numpy as np; rowops.add_clamp(np.zeros((2, 3), np.int64),"
            " np.ones((2, 3), np.int64), 5)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    set_, seen = run.stdout.split("\n")[:2]
    want = HOST + cpu_env.WIDE_VECTORS if AVX512 else "None"
    assert set_ == want and seen == want
    assert "not a recognized feature" not in run.stderr


def test_amx_request_matches_the_cpu_and_fails_cleanly_elsewhere(monkeypatch):
    """request_amx asks Linux for the tile state: granted on hosts whose CPU has AMX (Linux
    5.16 and later), refused (False, no exception) on other CPUs and other systems; the engine
    uses the tiles only where numba also compiles for AMX (cpu_engine.amx_ready)."""
    from lmzip import cpu_engine, simd

    amx_cpu = "+amx-int8" in HOST.split(",") and "+amx-tile" in HOST.split(",")
    granted = cpu_env.request_amx()
    assert isinstance(granted, bool)
    if not amx_cpu:
        assert not granted
    assert cpu_engine.amx_ready() == (simd.HAS_AMX and granted)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cpu_env.request_amx() is False
