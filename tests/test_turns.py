"""lmzip.turns: threads running compiled loops take turns in a fixed order, and stop when one
of them fails."""

import io
import threading

import numpy as np
import pytest
from conftest import read_corpus
from numba import njit

from lmzip import api, turns


@pytest.fixture(scope="module")
def lm(tiny_model_path):
    return api.load_model(tiny_model_path)


@njit(nogil=True, cache=False)
def _take_turns(g, g_n, ticks, turn, log):
    """Append g to log in slot tick * g_n + g of every tick; False if aborted."""
    for k in range(ticks):
        if not turns.wait_turn(turn, k * g_n + g):
            return False
        n = log[0]  # not atomic: only the thread holding the turn writes
        log[1 + n] = g
        log[0] = n + 1
        turns.store_release(turn, 0, k * g_n + g + 1)
    return True


@pytest.mark.parametrize("g_n", [2, 3])
def test_threads_take_turns_in_order(g_n):
    """Two threads (one per core here) and three (more threads than cores: the waiting ones
    yield theirs) write a log in exactly the slot order, nothing lost or doubled."""
    ticks = 3000 if g_n == 2 else 300
    turn, log = turns.new_turns(), np.zeros(1 + g_n * ticks, np.int64)
    threads = [threading.Thread(target=_take_turns, args=(g, g_n, ticks, turn, log))
               for g in range(g_n)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert log[0] == g_n * ticks
    assert (log[1:] == np.tile(np.arange(g_n), ticks)).all()
    assert turn[0] == g_n * ticks


def test_abort_stops_a_waiting_thread():
    turn, log = turns.new_turns(), np.zeros(8, np.int64)
    result = []
    t = threading.Thread(target=lambda: result.append(_take_turns(1, 2, 3, turn, log)))
    t.start()  # waits for slot 1, which never comes
    t.join(timeout=0.2)
    assert t.is_alive()
    turn[1] = 1
    t.join(timeout=30)
    assert not t.is_alive() and result == [False] and log[0] == 0


def test_a_failing_stream_stops_its_group(lm, monkeypatch):
    """An error in one stream's thread (api._decode_lockstep with a thread per stream) reaches
    the caller; the other stream's thread stops waiting for its turns instead of hanging."""
    data = read_corpus("lee_news.txt.zst", 3000)
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(data), buf, lm, api.CodingOptions(threads=1, chunk_size=1500))
    real = api._decode_slice_turn

    def failing(count, g, *args):
        if g == 1:
            raise RuntimeError("stream 1 failed")
        return real(count, g, *args)

    monkeypatch.setattr(api, "_decode_slice_turn", failing)
    monkeypatch.setattr(api, "_turn_threads", lambda: 2)
    errors = []

    def decode():
        try:
            api.decompress_stream(io.BytesIO(buf.getvalue()), io.BytesIO().write, lm,
                                  api.CodingOptions(threads=1))  # fmt: skip
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=decode)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive() and errors == ["stream 1 failed"]
