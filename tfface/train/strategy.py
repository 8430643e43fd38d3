"""Choosing a tf.distribute strategy, and which worker of a multi-worker run writes what.

The trainer's step is written once against `strategy.run`, so the default strategy (one device),
`MirroredStrategy` (several GPUs on one machine, or several logical CPU devices in tests) and
`MultiWorkerMirroredStrategy` (several machines, each with its own devices) share the same code. Gradients
are summed across every replica of every worker; with the loss averaged over the *global* batch
(`tfface.train.step`) the update equals one device's on that global batch.

Multi-worker runs are described by the ``TF_CONFIG`` environment variable, one per process, the same
``cluster`` everywhere and a different ``task``::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'

Two rules of `MultiWorkerMirroredStrategy` shape this module:

- it must be created before TensorFlow initialises its runtime (no op, no ``list_logical_devices`` before
  it), because the collective ops are configured at start-up; `make_strategy` therefore decides from
  ``TF_CONFIG`` and ``list_physical_devices`` only, which do not initialise it.
- every worker takes part in every collective, saving checkpoints included: all workers call save, the
  chief into the real directory, the others into a private one (`worker_dir`). Only the chief writes what
  a person reads (metrics, TensorBoard, export), so workers never overwrite each other (`is_chief`).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


def _tf_config_error(problem: str) -> ValueError:
    return ValueError(f"TF_CONFIG {problem}. MultiWorkerMirroredStrategy reads the cluster from the TF_CONFIG "
                      f"environment variable, set per process, e.g. {_TF_CONFIG_EXAMPLE} on the first "
                      "machine and index 1 on the second")


def read_tf_config(environ=None) -> dict | None:
    """The parsed, checked ``TF_CONFIG`` of this process, or ``None`` when it is unset or empty.

    Checked: JSON object; ``cluster`` maps ``worker`` (and optionally one ``chief``) to lists of
    ``"host:port"`` strings; ``task`` names one of those jobs and an index inside it. Other jobs (``ps``,
    ``evaluator``) belong to other strategies and are refused.

    Raises:
      ValueError: naming TF_CONFIG and what is wrong with it.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _tf_config_error(f"is not valid JSON ({err}): {raw!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise _tf_config_error(f"has no \"cluster\" object: {raw!r}")
    cluster = config["cluster"]
    if not cluster.get("worker") and not cluster.get("chief"):
        raise _tf_config_error(f"\"cluster\" names no \"worker\" addresses: {raw!r}")
    for job, addresses in cluster.items():
        if job not in ("worker", "chief"):
            raise _tf_config_error(f"job {job!r} is not used by MultiWorkerMirroredStrategy (only worker and "
                                   "chief)")
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise _tf_config_error(f"cluster.{job} must be a list of \"host:port\" strings, got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error(f"cluster.chief must hold one address, got {cluster['chief']!r}")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise _tf_config_error(f"\"task\" must be {{\"type\": one of {sorted(cluster)}, \"index\": i}}, got "
                               f"{task!r}")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise _tf_config_error(f"task.index must be an integer in [0, {len(cluster[task['type']])}) for the "
                               f"{len(cluster[task['type']])} {task['type']} address(es), got {index!r}")
    return config


def num_workers(tf_config: dict | None) -> int:
    """Processes in the cluster ``tf_config`` describes (chief included); 1 without one."""
    if not tf_config:
        return 1
    return sum(len(tf_config["cluster"].get(job, [])) for job in ("chief", "worker"))


def communication_options() -> tf.distribute.experimental.CommunicationOptions:
    """How MultiWorkerMirroredStrategy all-reduces: NCCL when this machine has GPUs, RING (gRPC) on CPU.

    NCCL is the fast GPU all-reduce and needs GPUs on every worker; RING is TensorFlow's own
    implementation and the only one that runs on CPU. Naming them (not AUTO) makes a run's choice visible
    in its log and the same on every worker with the same hardware. ``list_physical_devices`` does not
    initialise the runtime, so this may run before the strategy is created.
    """
    impl = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        implementation=impl.NCCL if tf.config.list_physical_devices("GPU") else impl.RING)


def _multi_worker(tf_config: dict | None) -> tf.distribute.Strategy:
    if tf_config is None:
        raise _tf_config_error("is not set: --strategy=multi_worker needs it")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication_options())
    except RuntimeError as err:
        if "program startup" not in str(err):
            raise
        raise RuntimeError("--strategy=multi_worker: MultiWorkerMirroredStrategy must be created before any "
                           "other TensorFlow op of the process (TensorFlow configures its collective ops at "
                           "start-up); build the Trainer, or call make_strategy, first") from err


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Return the strategy for `name`.

    - ``auto``: `MultiWorkerMirroredStrategy` when ``TF_CONFIG`` names more than one worker; else
      `MirroredStrategy` over all GPUs when there are two or more; else the default strategy.
    - ``one_device``: `OneDeviceStrategy` on the first GPU, or the CPU.
    - ``mirrored``: `MirroredStrategy` over all GPUs, or over all logical CPU devices when there is no GPU.
    - ``multi_worker``: `MultiWorkerMirroredStrategy` over the workers of ``TF_CONFIG`` (required), each
      using all its GPUs (or its CPU); all-reduce as :func:`communication_options` says.

    ``TF_CONFIG`` is read from ``os.environ``, where `MultiWorkerMirroredStrategy` itself reads it.

    Raises:
      ValueError: an unknown `name`, or a missing (``multi_worker``) or malformed ``TF_CONFIG``.
      RuntimeError: ``multi_worker`` asked for after TensorFlow's runtime was initialised.
    """
    if name not in ("auto", "one_device", "mirrored", "multi_worker"):
        raise ValueError(f"--strategy={name!r}: must be auto, one_device, mirrored or multi_worker")
    # A malformed TF_CONFIG fails under auto too: silently training alone would waste every machine's time.
    tf_config = read_tf_config() if name in ("auto", "multi_worker") else None
    if name == "multi_worker" or (name == "auto" and num_workers(tf_config) > 1):
        return _multi_worker(tf_config)  # before anything below initialises the runtime
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)


def task_of(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """``(task type, index)`` of this process in a multi-worker `strategy`; ``(None, 0)`` on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's shared outputs (metrics, TensorBoard, export).

    The chief is the ``chief`` task, or worker 0 when the cluster has no ``chief`` job (TensorFlow's rule);
    on one machine the only process is the chief.
    """
    task_type, task_id = task_of(strategy)
    if task_type is None or task_type == "chief":
        return True
    jobs = strategy.cluster_resolver.cluster_spec().jobs
    return task_type == "worker" and task_id == 0 and "chief" not in jobs


def worker_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process saves what every worker must save (checkpoints): `workdir` for the chief,
    ``<workdir>/.worker_<i>`` for worker ``i`` otherwise.

    Every worker must call save (it is a collective) and two processes must never write one file, so the
    non-chief copies go to private directories. Their weights equal the chief's (variables are mirrored),
    so a worker can resume from its own copy even where machines share no file system.
    """
    if is_chief(strategy):
        return workdir
    task_type, task_id = task_of(strategy)
    return os.path.join(workdir, f".{task_type}_{task_id}")


def sync_workers(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker of a multi-worker `strategy` gets here; a no-op on one machine.

    A worker that exits while another still works (the chief verifying and exporting after the last epoch)
    makes TensorFlow's coordination service declare it crashed and abort the remaining collectives; the
    trainer calls this before returning so that all workers finish together. It is one all-reduce of a
    scalar.
    """
    if task_of(strategy)[0] is None:
        return
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
    if int(total) != strategy.num_replicas_in_sync:  # cannot happen unless the collective is broken
        raise RuntimeError(f"worker barrier summed {float(total)}, expected {strategy.num_replicas_in_sync}")
