"""Per-worker input for image-folder (and synthetic) training: each worker reads its own files.

`strategy.experimental_distribute_dataset` on one dataset of file paths cannot shard by file (a
``from_tensor_slices`` dataset has no files), so under MultiWorkerMirroredStrategy TensorFlow falls back to
sharding by *data*: every worker reads and decodes every image and keeps every n-th element. Here the
split is explicit, as `tfface.train.records` does for record files: the input is built with
`strategy.distribute_datasets_from_function`, and input pipeline ``i`` of ``n`` (one per worker; see
`tf.distribute.InputContext`) takes the files ``paths[i::n]`` *before* any shuffling, so the workers read
disjoint sets of images whose union is the whole training set. Because a `FolderIndex` lists images
grouped by class, every class is spread over every worker that has at least one of its images.

Each pipeline batches ``InputContext.get_per_replica_batch_size(global batch)``: consecutive batches of a
pipeline go to that worker's replicas, so all replicas together see one global batch per step, and the
loss averaged over the global batch (`tfface.train.step`) gives one device's update on that batch. For a
P x K pipeline the "batch" to split is the number of identities P (each replica gets P / replicas whole
identities, K images each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from tfface.data.checks import positive_int

# build_fn(paths, labels, per_replica_batch, pipeline_id) -> tf.data.Dataset of per-replica batches.
BuildFn = Callable[[Sequence, Sequence, int, int], tf.data.Dataset]


def shard(items: Sequence, num_pipelines: int, pipeline_id: int) -> Sequence:
    """Pipeline ``pipeline_id``'s share of ``items``: ``items[pipeline_id::num_pipelines]`` (lists, arrays)."""
    num_pipelines = positive_int(num_pipelines, "num_pipelines")
    if not 0 <= pipeline_id < num_pipelines:
        raise ValueError(f"pipeline_id={pipeline_id} is not in [0, {num_pipelines})")
    return items[pipeline_id::num_pipelines]


def folder_dataset_fn(paths: Sequence[str], labels: Sequence[int], global_batch: int,
                      build_fn: BuildFn) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The ``dataset_fn`` for `strategy.distribute_datasets_from_function` (see the module doc).

    Args:
      paths: every training file, in a fixed order (``FolderIndex.paths``); identical on every worker.
      labels: their class ids.
      global_batch: the batch of one step over all replicas of all workers (images, or identities P for a
        P x K dataset); must divide evenly by the replica count.
      build_fn: ``build_fn(paths, labels, per_replica_batch, pipeline_id)`` builds one pipeline's dataset
        of per-replica batches from its share (shuffle, repeat and augment inside). Give each pipeline its
        own seed (``seed + pipeline_id``) so workers do not flip in lockstep.

    Raises:
      ValueError: ``len(labels) != len(paths)``; when called, a share with no file.
    """
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
    global_batch = positive_int(global_batch, "global_batch")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        n, i = context.num_input_pipelines, context.input_pipeline_id
        mine = shard(paths, n, i)
        if not len(mine):
            raise ValueError(f"{len(paths)} training images cannot be shared by {n} input pipelines (workers)")
        # Raises ValueError when the global batch does not divide by the replica count.
        batch = context.get_per_replica_batch_size(global_batch)
        return build_fn(mine, shard(labels, n, i), batch, i)

    return dataset_fn


def distribute_folder_dataset(strategy: tf.distribute.Strategy, paths: Sequence[str], labels: Sequence[int],
                              global_batch: int, build_fn: BuildFn) -> tf.distribute.DistributedDataset:
    """The distributed training input: `folder_dataset_fn` handed to ``distribute_datasets_from_function``.

    Iterate it (``iter(...)``) and pass the iterator to the step made by `make_train_step`. On one device
    (the default strategy) there is one pipeline holding every file and one replica, so the input is
    exactly ``build_fn(paths, labels, global_batch, 0)``.
    """
    return strategy.distribute_datasets_from_function(folder_dataset_fn(paths, labels, global_batch, build_fn))
