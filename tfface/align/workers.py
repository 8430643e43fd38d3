"""Running align jobs in a process pool: one MTCNN detector per worker, started quietly.

Workers are started with ``spawn``, never ``fork``: forking a process whose TensorFlow or OpenCV thread
pools already run can deadlock the child (see :mod:`tfface.data.synthetic`). ``spawn`` re-imports the
caller's main module, so a script using more than one worker needs the ``if __name__ == "__main__":``
guard; without it the pool dies at start-up and :func:`run_pool` raises a RuntimeError that says so.

Each worker builds one :class:`~tfface.align.detect.FaceDetector` in its initializer (importing
TensorFlow and loading MTCNN takes a few seconds) and runs TensorFlow on ``cores // num_workers``
threads: MTCNN's small convolutions gain nothing from more threads per image (measured on the 2-core
machine: 0.13 s per 600x512 photo on one thread and on two), so processes, not threads, use the cores.
TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) are printed before any log level applies;
the worker sends them to /dev/null so that they do not bury the parent's progress bar, once per worker.
Work goes out in chunks, at most three per worker in flight, so memory stays flat on large trees.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from concurrent import futures

import cv2
import numpy as np

_WORKER: dict = {}  # per worker process: the detector and the options, built once by _init_worker


@contextlib.contextmanager
def _stderr_silenced():
    """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes)
    are printed before any log level applies and would bury the parent's progress bar, once per worker."""
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no usable stderr (closed descriptor): nothing to keep clean
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, e.g. under taskset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_detector(detector_kwargs: dict, threads: int | None = None):
    """A FaceDetector, built and run once with stderr silenced so TensorFlow starts up quietly.

    ``threads`` sets TensorFlow's thread pools; only possible before TensorFlow runs its first op, so
    only in a fresh worker process.
    """
    with _stderr_silenced():
        if threads is not None:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        from tfface.align.detect import FaceDetector

        detector = FaceDetector(**detector_kwargs)
        detector.detect(np.zeros((64, 64, 3), np.uint8))  # initialises TensorFlow's runtime now
    return detector


def _init_worker(detector_kwargs: dict | None, options: dict, threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process only: hides per-image TF warnings
    cv2.setNumThreads(1)
    _WORKER["detector"] = None if detector_kwargs is None else build_detector(detector_kwargs, threads)
    _WORKER["options"] = options


def _run_in_worker(chunk_fn, chunk):
    return chunk_fn(chunk, _WORKER["detector"], _WORKER["options"])


def run_pool(chunk_fn, tasks, num_workers: int, detector_kwargs: dict | None, options, on_results,
             on_lost) -> None:
    """Runs ``chunk_fn(chunk, detector, options)`` over ``tasks`` in ``num_workers`` spawned processes.

    ``chunk_fn`` must be a module-level function (it is pickled by name); ``detector`` is the worker's
    FaceDetector built from ``detector_kwargs`` (None builds none). Each chunk's return value is passed to
    ``on_results`` in the parent as it arrives (in completion order). If a worker dies, the pool is lost:
    the tasks whose results had not come back are passed to ``on_lost`` (a list) and the call returns
    normally; if no result at all came back (start-up failure, or a crash on the first photos), RuntimeError.
    """
    threads = max(1, available_cores() // num_workers)
    chunk = max(1, min(8, len(tasks) // (num_workers * 4)))
    pending = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)][::-1]
    received = 0
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(num_workers, ctx, _init_worker, (detector_kwargs, options, threads)) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < 3 * num_workers:
                    part = pending.pop()
                    running[pool.submit(_run_in_worker, chunk_fn, part)] = part
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    results = fut.result()  # raises BrokenProcessPool if a worker died
                    running.pop(fut)
                    received += len(results)
                    on_results(results)
        except futures.process.BrokenProcessPool as e:
            lost = [t for part in pending for t in part]
            for fut, part in running.items():  # chunks finished before the crash still count
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    received += len(fut.result())
                    on_results(fut.result())
                else:
                    lost.extend(part)
            if received == 0:
                raise RuntimeError(
                    "tfface-align worker processes died before aligning anything: at start-up (when calling "
                    "align_folder from a script with num_workers > 1, put the call under `if __name__ == "
                    "'__main__':`; workers are spawned and re-import the main module) or on the first photos "
                    "(out of memory?); num_workers=1 runs in this process and shows the error") from e
            on_lost(lost)
