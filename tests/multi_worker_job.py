"""One process of tests/test_multi_worker.py: N steps of the real `make_train_step` on a fixed global batch.

    python tests/multi_worker_job.py worker OUT_DIR      # one worker; TF_CONFIG in the environment
    python tests/multi_worker_job.py reference OUT_DIR   # one device, then MirroredStrategy on 2 logical CPUs

Every run feeds the same rows through `distribute_folder_dataset` (the "files" are row numbers), so
pipeline i of n gets rows i::n in order and each step's replicas together see rows
``[step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)``, the batch one device trains on. Each run writes its
initial and final weights, per-step losses and the rows every local replica received to ``<name>.npz``.

The model is BatchNorm-free (Dense layers feeding ArcFace): with BatchNorm each replica would normalise its
own slice of the batch, and only synchronised BN can make that equal one device.
"""

from __future__ import annotations

import json
import os
import sys

STEPS = 3
GLOBAL_BATCH = 16
ROWS = STEPS * GLOBAL_BATCH
CLASSES = 5


def main(mode: str, out_dir: str) -> None:
    import tensorflow as tf

    # Three processes share the test machine's cores: one thread each keeps them from thrashing.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfface.train.strategy import is_chief, make_strategy, sync_workers, worker_dir

    if mode == "worker":
        strategy = make_strategy("multi_worker")  # first: MultiWorkerMirroredStrategy must precede any op
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        runs = [(f"worker_{task}", strategy)]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        runs = [("one_device", make_strategy("one_device")), ("mirrored", make_strategy("mirrored"))]
    for name, strategy in runs:
        result = train(strategy)
        workdir = os.path.join(out_dir, "workdir")
        result.update(chief=is_chief(strategy), worker_dir=worker_dir(workdir, strategy))
        if mode == "worker":
            result["checkpoint"] = save_checkpoint(strategy, result.pop("checkpoint_parts"), workdir)
        result.pop("checkpoint_parts", None)
        with open(os.path.join(out_dir, name + ".npz"), "wb") as fh:
            import numpy as np

            np.savez(fh, **{k: np.asarray(v) for k, v in result.items()})
        sync_workers(strategy)  # the chief's npz is written before either worker exits
        print(name, "done", flush=True)


def train(strategy) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tfface.layers import ArcFace
    from tfface.train.distributed_input import distribute_folder_dataset
    from tfface.train.step import make_train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 6)).astype("float32")
    y = rng.integers(0, CLASSES, ROWS).astype("int32")
    rows = np.arange(ROWS)

    def build(row_ids, labels, batch, pipeline_id):
        # No shuffle: the test needs a known global batch per step.
        return tf.data.Dataset.from_tensor_slices((x[row_ids], labels)).batch(batch, drop_remainder=True)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(8)(hidden))
        # Glorot, not the paper's N(0, 0.01): the gradient of a normalised kernel scales with 1 / |w|, and tiny
        # columns would amplify the float rounding this test compares.
        head = ArcFace(CLASSES, s=8.0, m=0.3, kernel_initializer="glorot_uniform")
        head.build((None, 8))
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    weights = model.weights + head.weights
    initial = [v.numpy() for v in weights]
    step = make_train_step(strategy, model, optimizer, GLOBAL_BATCH, l2_decay=5e-4, head=head)
    iterator = iter(distribute_folder_dataset(strategy, rows, y, GLOBAL_BATCH, build))
    losses = [float(step(iterator)[0]) for _ in range(STEPS)]

    # The rows each local replica receives per step, from the same sharding with row numbers as data.
    seen = distribute_folder_dataset(
        strategy, rows, y, GLOBAL_BATCH,
        lambda row_ids, labels, batch, i: tf.data.Dataset.from_tensor_slices(row_ids).batch(batch))
    replica_rows = []
    for batch, _ in zip(seen, range(STEPS), strict=False):
        replica_rows.append([t.numpy() for t in strategy.experimental_local_results(batch)])
    result = {"replicas": strategy.num_replicas_in_sync, "losses": losses, "rows": np.array(replica_rows),
              "checkpoint_parts": {"model": model, "head": head, "optimizer": optimizer}}
    for i, (a, b) in enumerate(zip(initial, weights, strict=True)):
        result[f"init_{i}"], result[f"final_{i}"] = a, b.numpy()
    return result


def save_checkpoint(strategy, parts, workdir: str) -> str:
    """Every worker saves (a collective), each into its own `worker_dir`, as the trainer does."""
    import tensorflow as tf

    from tfface.train.strategy import worker_dir

    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**parts),
                                         os.path.join(worker_dir(workdir, strategy), "checkpoints"), max_to_keep=1)
    return manager.save(checkpoint_number=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
