"""Tests of tfface.align.workers.run_pool with stand-in chunk functions and no detector, so the spawned
workers start in about a second: every task comes back once, a worker crash loses only the unfinished
chunks, and a crash before any result is a clear RuntimeError."""

import os

import pytest

from tfface.align.workers import available_cores, run_pool


def echo_chunk(chunk, detector, options):
    """Module-level (spawned workers import it by name)."""
    assert detector is None
    return [(t, {"pid": os.getpid(), **options}) for t in chunk]


def crash_on_die(chunk, detector, options):
    if "die" in chunk:
        os._exit(3)  # a hard crash, as the OOM killer would do
    return [(t, {}) for t in chunk]


def _collect(chunk_fn, tasks, num_workers=1):
    results, lost = [], []
    run_pool(chunk_fn, tasks, num_workers, None, {"tag": 7}, results.extend, lost.extend)
    return results, lost


def test_every_task_comes_back_once():
    tasks = [f"t{i}" for i in range(23)]
    results, lost = _collect(echo_chunk, tasks)
    assert lost == [] and sorted(t for t, _ in results) == sorted(tasks)
    assert {r["tag"] for _, r in results} == {7} and os.getpid() not in {r["pid"] for _, r in results}


def test_worker_crash_loses_only_unfinished_chunks():
    tasks = [f"t{i}" for i in range(40)]
    tasks[35] = "die"  # chunks of 8: the fifth chunk crashes after four have been sent back
    results, lost = _collect(crash_on_die, tasks)
    done = [t for t, _ in results]
    assert "die" in lost and "die" not in done
    assert sorted(done + lost) == sorted(tasks) and len(done) >= 8


def test_crash_before_any_result_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="died before aligning anything"):
        _collect(crash_on_die, ["die", "a", "b"])


def test_available_cores():
    assert 1 <= available_cores() <= (os.cpu_count() or 1)
