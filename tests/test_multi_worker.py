"""MultiWorkerMirroredStrategy (2 local worker processes) and MirroredStrategy (2 logical CPUs) equal one
device after N steps of the real training step; TF_CONFIG parsing; chief / worker directories; per-worker
sharding of folder input.

The strategy runs live in subprocesses (tests/multi_worker_job.py): MultiWorkerMirroredStrategy must be
created before TensorFlow initialises its runtime, which pytest's process did long ago, and two
MirroredStrategy instances in one process collide. The reference process (one device, then mirrored) runs
at the same time as the two workers.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfface.train.distributed_input import distribute_folder_dataset, folder_dataset_fn, shard
from tfface.train.strategy import is_chief, make_strategy, num_workers, read_tf_config, sync_workers, worker_dir

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_job.py")
TIMEOUT_S = 240  # per launch; a healthy one takes ~15 s on 2 contended cores


def tf_config(ports, index, job="worker"):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": job, "index": index}})


# ------------------------------------------------------------------------------------------ TF_CONFIG
def test_read_tf_config_valid_unset_and_worker_counts():
    assert read_tf_config({}) is None and read_tf_config({"TF_CONFIG": "  "}) is None
    config = read_tf_config({"TF_CONFIG": tf_config([1, 2, 3], 2)})
    assert config["task"] == {"type": "worker", "index": 2}
    assert num_workers(config) == 3 and num_workers(None) == 1
    chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief", "index": 0}}
    assert num_workers(read_tf_config({"TF_CONFIG": json.dumps(chief)})) == 3


@pytest.mark.parametrize("raw, problem", [
    ("{not json", "not valid JSON"),
    ('["a:1"]', "no \"cluster\" object"),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "names no \"worker\""),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "'ps'"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["a:1"]}}', "\"task\" must be"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "\"task\" must be"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "in [0, 2)"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "task.index"),
    ('{"cluster": {"worker": ["a:1"], "chief": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}',
     "one address"),
])
def test_malformed_tf_config_is_named(raw, problem, monkeypatch):
    with pytest.raises(ValueError, match="TF_CONFIG") as err:
        read_tf_config({"TF_CONFIG": raw})
    assert problem in str(err.value)
    # auto refuses it too rather than silently training on one machine.
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy("auto")


def test_make_strategy_names_and_missing_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not set: --strategy=multi_worker needs it"):
        make_strategy("multi_worker")
    with pytest.raises(ValueError, match="auto, one_device, mirrored or multi_worker"):
        make_strategy("horovod")
    # One worker in TF_CONFIG: auto stays on this machine (no GPU in CI: the default strategy).
    monkeypatch.setenv("TF_CONFIG", tf_config([1], 0))
    if not tf.config.list_physical_devices("GPU"):
        assert make_strategy("auto") is tf.distribute.get_strategy()


@pytest.mark.parametrize("name", ["multi_worker", "auto"])
def test_multi_worker_after_runtime_start_is_explained(name, monkeypatch):
    tf.config.list_logical_devices()  # initialises the runtime (if no earlier test did): too late for MWMS
    monkeypatch.setenv("TF_CONFIG", tf_config(free_ports(2), 0))
    with pytest.raises(RuntimeError, match="before any other TensorFlow op"):
        make_strategy(name)


# ---------------------------------------------------------------------------------- chief, worker_dir
class FakeMultiWorker:
    """Just the part of MultiWorkerMirroredStrategy that is_chief / worker_dir read."""

    def __init__(self, cluster, task_type, task_id):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


@pytest.mark.parametrize("cluster, task_type, task_id, chief, subdir", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True, None),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False, ".worker_1"),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "chief", 0, True, None),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 0, False, ".worker_0"),
])
def test_chief_writes_workdir_others_private_dirs(cluster, task_type, task_id, chief, subdir):
    strategy = FakeMultiWorker(cluster, task_type, task_id)
    assert is_chief(strategy) is chief
    assert worker_dir("/runs/a", strategy) == (os.path.join("/runs/a", subdir) if subdir else "/runs/a")


def test_single_machine_process_is_chief():
    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy) and worker_dir("/runs/a", strategy) == "/runs/a"
    sync_workers(strategy)  # nothing to wait for


# --------------------------------------------------------------------------------- folder input sharding
def test_pipelines_read_disjoint_files_covering_all():
    paths = [f"id{i % 3}/img{i}.jpg" for i in range(11)]
    labels = np.arange(11) % 3
    calls = []

    def build(p, y, batch, i):
        calls.append((list(p), list(y), batch, i))
        return tf.data.Dataset.from_tensor_slices(list(p)).batch(batch)

    fn = folder_dataset_fn(paths, labels, 8, build)
    for i in range(2):  # 2 workers with 2 replicas each: per-replica batch 8 / 4
        fn(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=4))
    (p0, y0, b0, i0), (p1, y1, b1, i1) = calls
    assert (b0, b1, i0, i1) == (2, 2, 0, 1)
    assert p0 == paths[0::2] and p1 == paths[1::2]  # i::n, before any shuffle
    assert not set(p0) & set(p1) and sorted(p0 + p1) == sorted(paths)
    assert y0 == list(labels[0::2]) and y1 == list(labels[1::2])


def test_sharding_errors():
    build = lambda p, y, b, i: tf.data.Dataset.from_tensor_slices(list(p))  # noqa: E731
    with pytest.raises(ValueError, match="cannot be shared by 2 input pipelines"):
        folder_dataset_fn(["a"], [0], 2, build)(tf.distribute.InputContext(2, 1, 2))
    with pytest.raises(ValueError):  # 6 is not a multiple of 4 replicas
        folder_dataset_fn(["a", "b"], [0, 1], 6, build)(tf.distribute.InputContext(1, 0, 4))
    with pytest.raises(ValueError, match="2 labels for 3 paths"):
        folder_dataset_fn(["a", "b", "c"], [0, 1], 2, build)
    with pytest.raises(ValueError, match="pipeline_id=2"):
        shard([1, 2], 2, 2)


def test_one_device_input_is_build_fn_on_everything():
    rows = np.arange(10)
    build = lambda r, y, b, i: tf.data.Dataset.from_tensor_slices((r, y)).batch(b)  # noqa: E731
    got = [r.numpy().tolist() for r, _ in distribute_folder_dataset(tf.distribute.get_strategy(), rows, rows % 2,
                                                                      4, build)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ------------------------------------------------------------------------------- the processes themselves
def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_together(jobs, out_dir, timeout):
    """Start every ``(name, mode, env)`` job; wait for all. If one fails or time runs out, kill the rest
    (a worker whose peer died would otherwise wait for it forever) and fail with every job's output."""
    procs, logs = {}, {}
    for name, mode, env in jobs:
        logs[name] = open(os.path.join(out_dir, name + ".log"), "w+")
        procs[name] = subprocess.Popen([sys.executable, JOB, mode, out_dir], stdout=logs[name],
                                       stderr=subprocess.STDOUT, env=env)
    deadline, failed = time.monotonic() + timeout, None
    while any(p.poll() is None for p in procs.values()):
        failed = next((n for n, p in procs.items() if p.poll() not in (None, 0)), None)
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()
    report = ""
    for name, fh in logs.items():
        fh.seek(0)
        report += f"\n===== {name} (exit {procs[name].returncode}) =====\n{fh.read()[-4000:]}"
        fh.close()
    ok = all(p.returncode == 0 for p in procs.values())
    return ok, (f"{failed} failed" if failed else "timed out" if not ok else "ok") + report


def test_multi_worker_and_mirrored_match_one_device(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    base.update(TF_CPP_MIN_LOG_LEVEL="1", CUDA_VISIBLE_DEVICES="")  # each worker: its one CPU device
    for attempt in range(2):  # a port taken between free_ports() and the worker's bind: retry once
        ports = free_ports(2)
        jobs = [("reference", "reference", base)]
        jobs += [(f"worker_{i}", "worker", {**base, "TF_CONFIG": tf_config(ports, i)}) for i in range(2)]
        ok, report = run_together(jobs, str(tmp_path), TIMEOUT_S)
        if ok or "Address already in use" not in report or attempt:
            break
    assert ok, report
    runs = {n: dict(np.load(tmp_path / f"{n}.npz")) for n in ("one_device", "mirrored", "worker_0", "worker_1")}
    one = runs["one_device"]
    steps, batch = one["rows"].shape[0], one["rows"].shape[-1]
    assert [int(r["replicas"]) for r in runs.values()] == [1, 2, 2, 2]

    # Input: every step, the replicas' rows are disjoint and together form one device's global batch.
    for k in range(steps):
        want = np.arange(k * batch, (k + 1) * batch)
        np.testing.assert_array_equal(one["rows"][k, 0], want)
        for parts in (list(runs["mirrored"]["rows"][k]), [runs[f"worker_{i}"]["rows"][k, 0] for i in range(2)]):
            got = np.concatenate(parts)
            assert len(set(got)) == len(got) == batch and set(got) == set(want)
        # Worker i reads rows i::2 of the data, i.e. the even / odd rows of each global batch.
        np.testing.assert_array_equal(runs["worker_1"]["rows"][k, 0], want[1::2])

    names = sorted(k for k in one if k.startswith("final_"))
    for name, run in runs.items():
        for k in names:  # same seed, same initial weights, bit for bit
            np.testing.assert_array_equal(run[k.replace("final", "init")], one[k.replace("final", "init")])
        # The loss is one all-reduced sum of per-example terms / global batch: equal up to summation order.
        np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-5, err_msg=name)
        # float32 weights after 3 SGD-momentum steps differ only by the order in which per-example gradients
        # are summed (one device: one sum over 16; 2 replicas: two sums of 8, then all-reduce): measured
        # 6e-8 of the weights' scale (one ulp). 1e-6 leaves room for other CPUs' kernels yet fails a step
        # that adds the L2 term λ·w on every replica, i.e. R times (measured 1.9e-5).
        worst = max(float(np.max(np.abs(run[k] - one[k])) / max(1.0, np.max(np.abs(one[k])))) for k in names)
        assert worst < 1e-6, (name, worst)
        assert any(not np.allclose(run[k], run[k.replace("final", "init")]) for k in names)  # it trained
    for k in names:  # mirrored variables: both workers hold the very same values
        np.testing.assert_array_equal(runs["worker_0"][k], runs["worker_1"][k])

    # Chief: worker 0 writes into the work directory, worker 1 into its own; both saved their checkpoint.
    workdir = str(tmp_path / "workdir")
    assert bool(runs["worker_0"]["chief"]) and not bool(runs["worker_1"]["chief"])
    assert str(runs["worker_0"]["worker_dir"]) == workdir
    assert str(runs["worker_1"]["worker_dir"]) == os.path.join(workdir, ".worker_1")
    for i in range(2):
        path = str(runs[f"worker_{i}"]["checkpoint"])
        assert path.startswith(str(runs[f"worker_{i}"]["worker_dir"]) + os.sep)
        saved = tf.train.load_checkpoint(path)
        kernel = next(n for n in saved.get_variable_to_shape_map() if n.startswith("head/") and "kernel" in n)
        np.testing.assert_array_equal(saved.get_tensor(kernel), runs["worker_0"][f"final_{len(names) - 1}"])
