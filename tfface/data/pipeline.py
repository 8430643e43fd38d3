"""tf.data input pipelines: encoded image files -> (float32 images 0..255, int32 labels) batches.

Order of the training pipeline (each step where it is cheapest)::

    (path, label) -> shuffle -> [repeat] -> read + decode + flip  (parallel map) -> batch -> float32 -> prefetch
    with cache=True:
    (path, label) -> read + decode (parallel map) -> cache (uint8 in RAM) -> shuffle -> [repeat] -> flip -> ...
    from records (TFRecord / .rec, already shuffled by their reader):
    (bytes, label) -> [repeat] -> decode + flip (parallel map) -> batch -> float32 -> prefetch

The part from the parallel map on is one shared function, so files and records give identical batches.
``bench/pipeline.py`` compares alternatives on TFRecords of 112x112 JPEGs (README, Benchmarks): batching the
encoded strings and decoding with ``map_fn``, or flipping whole batches, ran at about half the rate of this
per-element map; the ``INTEGER_FAST`` JPEG DCT, a private thread pool, the interleave cycle length and
``deterministic=False`` made no difference beyond the noise on 2 cores; only caching decoded images was
clearly faster (about 3x, for datasets that fit in RAM).

* Shuffling paths before decoding costs a few bytes per element, so the default buffer is the whole
  dataset (a perfect shuffle). With ``cache=True`` images are decoded once and the shuffle runs over the
  cached uint8 tensors, which the buffer shares rather than copies.
* Images stay uint8 until after batching (4x less memory traffic in the map); the float32 cast is one
  op per batch. Normalisation ``(x - 127.5) / 128`` is done inside the model (see DESIGN.md), so exported
  models take raw pixels.
* The flip is ``tf.image.stateless_random_flip_left_right`` with a per-element seed drawn from
  ``tf.data.Dataset.random(seed)``: a stateful random op inside a parallel map would make results depend
  on thread scheduling, whereas this is reproducible for a given ``seed`` and still differs every epoch.
* Without a seed the parallel map may return elements out of order (``deterministic=False``) so a slow
  file does not stall the batch; with a seed (tests) the order is fixed.
* Files must be decodable by ``tf.io.decode_image``: pass paths from
  :func:`tfface.data.folder.scan_image_folder`, which skips corrupt files up front, because a decode
  error inside tf.data stops the whole iteration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfface.data.checks import positive_int

AUTOTUNE = tf.data.AUTOTUNE


def _image_size(image_size, name: str = "image_size") -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{name} must be positive, got {image_size!r}")
    return height, width


def decode_image(encoded: tf.Tensor, image_size: Sequence[int] | None = (112, 112)) -> tf.Tensor:
    """Decodes one JPEG/PNG/BMP (/GIF first frame) string to a uint8 RGB tensor ``(H, W, 3)``.

    Grayscale and RGBA inputs become 3-channel RGB (alpha is dropped, as cv2 ``IMREAD_COLOR`` does);
    16-bit PNGs are reduced to 8 bits. If ``image_size`` is given and differs from the decoded size the
    image is resized (bilinear with antialiasing, rounded back to uint8); matching images pass unchanged.
    Works eagerly and inside ``tf.function`` / ``Dataset.map``.
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, (None, None, 3))
    if image_size is None:
        return image
    height, width = _image_size(image_size)

    def resize():
        resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    image = tf.cond(same, lambda: image, resize)
    return tf.ensure_shape(image, (height, width, 3))


def _check_paths(paths) -> list[str]:
    if isinstance(paths, (str, bytes)):
        raise TypeError("paths must be a sequence of file paths, not a single string")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("paths is empty: nothing to build a dataset from")
    return [p.decode() if isinstance(p, bytes) else p for p in paths]


def _check_labels(labels, num_paths: int) -> np.ndarray:
    """Integer, 1-D, non-negative, int32-representable labels; anything else is a clear error.

    Float labels would be cast silently by a margin head's one-hot/gather and train on wrong classes.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.ndim != 1 or len(labels) != num_paths:
        raise ValueError(f"labels must have shape ({num_paths},) to match paths, got {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, found {labels.min()}")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels must fit in int32, found {labels.max()}")
    return labels.astype(np.int32)


def build_train_dataset(
    paths: Sequence[str],
    labels,
    batch_size: int,
    image_size: Sequence[int] = (112, 112),
    shuffle: bool = True,
    seed: int | None = None,
    flip: bool = True,
    shuffle_buffer: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = True,
    cache: bool = False,
) -> tf.data.Dataset:
    """Training batches ``(images float32 [B, H, W, 3] in 0..255, labels int32 [B])``.

    Args:
      paths: image files (e.g. ``FolderIndex.paths``), all decodable by ``tf.io.decode_image``.
      labels: integer class ids, one per path (``FolderIndex.labels``).
      batch_size: images per batch.
      image_size: ``(height, width)``; images of another size are resized.
      shuffle: reshuffle every epoch (``reshuffle_each_iteration``).
      seed: makes shuffling, flips and element order reproducible (tests); ``None`` for training speed.
      flip: random horizontal flip with probability 0.5, different every epoch.
      shuffle_buffer: elements in the shuffle buffer; default the whole dataset.
      repeat: repeat forever (then one epoch is ``len(paths) // batch_size`` steps for the caller).
      drop_remainder: drop a last partial batch, so every batch has a static shape ``[B, H, W, 3]``.
      cache: decode each image once and keep the uint8 images in memory (``H*W*3`` bytes each, 37 KB at
        112x112: ~0.75 GB for 20k images). Worth it for small datasets on few CPU cores.

    Raises:
      TypeError: non-integer labels or a string for ``paths``.
      ValueError: empty paths, label shape/range problems, bad sizes, or fewer images than one batch with
        ``drop_remainder=True`` and no repeat (the dataset would be empty).
    """
    paths = _check_paths(paths)
    labels = _check_labels(labels, len(paths))
    batch_size = positive_int(batch_size, "batch_size")
    image_size = _image_size(image_size)
    buffer = len(paths) if shuffle_buffer is None else positive_int(shuffle_buffer, "shuffle_buffer")
    if drop_remainder and not repeat and len(paths) < batch_size:
        raise ValueError(
            f"{len(paths)} images < batch_size {batch_size} with drop_remainder=True and repeat=False: "
            "the dataset would yield no batch"
        )
    # Order only matters when it must be reproducible or was asked to be kept (no shuffle).
    deterministic = seed is not None or not shuffle

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if cache:
        ds = ds.map(
            lambda p, y: (decode_image(tf.io.read_file(p), image_size), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    load = None if cache else (lambda path: decode_image(tf.io.read_file(path), image_size))
    return _load_flip_batch(ds, load, batch_size, flip, seed, deterministic, drop_remainder)


def _load_flip_batch(ds, load, batch_size: int, flip: bool, seed, deterministic: bool, drop_remainder: bool,
                     num_classes: int | None = None) -> tf.data.Dataset:
    """The tail every training pipeline shares: load + flip (one parallel map) -> batch -> float32 -> prefetch.

    ``ds`` yields ``(x, label)``; ``load(x)`` returns the uint8 image (``None``: ``x`` already is one, e.g.
    from a cache). With ``num_classes`` each label is asserted to be below it inside the same map.
    """
    if flip:
        # One [2] stateless seed per element; rerandomize_each_iteration gives new flips every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

    def prepare(element, flip_seed=None):
        image, label = element
        if load is not None:
            image = load(image)
        if flip_seed is not None:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if num_classes is not None:
            label = _assert_label_below(label, num_classes)
        return image, label

    if flip:
        ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    elif load is not None or num_classes is not None:
        ds = ds.map(lambda x, y: prepare((x, y)), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)  # fmt: skip
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(AUTOTUNE)


def _assert_label_below(label: tf.Tensor, num_classes: int) -> tf.Tensor:
    # A label outside [0, num_classes) would index past the margin head's columns: an error on CPU, silent
    # garbage on GPU. Stop with a message naming it instead.
    ok = tf.logical_and(label >= 0, label < num_classes)
    check = tf.debugging.Assert(ok, [f"class label out of range for {num_classes} classes:", label])
    with tf.control_dependencies([check]):
        return tf.identity(label)


def build_train_dataset_from_records(
    records: tf.data.Dataset,
    batch_size: int,
    image_size: Sequence[int] = (112, 112),
    seed: int | None = None,
    flip: bool = True,
    repeat: bool = False,
    drop_remainder: bool = True,
    cache: bool = False,
    shuffle_buffer: int | None = None,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Training batches from encoded images, as :func:`build_train_dataset` makes them from files.

    ``records`` yields ``(encoded image tf.string, integer label)`` (extra components, such as the source
    of :func:`tfface.data.tfrecord.tfrecord_dataset`, are dropped): a TFRecord or ``.rec`` stream. The output
    is the same as :func:`build_train_dataset` over the same images in the same order and ``seed``
    (``float32 [B, H, W, 3]`` in 0..255, ``int32 [B]``, stateless seeded flips, static batch shape with
    ``drop_remainder``, prefetch): only the first step differs, decoding bytes instead of reading a file.

    Order: the source shuffles (``tfrecord_dataset`` shuffles shards and records, ``recordio_dataset`` with
    ``shuffle=True`` its keys) and this function keeps that order, except that ``shuffle_buffer`` adds a
    shuffle here. ``cache=True`` decodes every image once and keeps the uint8 images in memory (37 KB at
    112x112); the source's order is then frozen after the first pass, so a ``shuffle_buffer`` (ideally the
    number of images) is required to reshuffle every epoch.

    Args:
      records: the encoded-image dataset (one epoch; ``repeat`` repeats it, reshuffling if the source does).
      batch_size: images per batch (per replica under a strategy's input function).
      image_size: ``(height, width)``; images of another size are resized.
      seed: flips (and the optional shuffle) reproducible and element order kept; ``None``: parallel maps may
        reorder elements (``deterministic=False``) for speed.
      flip: random horizontal flip with probability 0.5, different every epoch.
      repeat: repeat forever.
      drop_remainder: drop a last partial batch (static shapes).
      cache: decode once, keep uint8 images in RAM (needs ``shuffle_buffer``).
      shuffle_buffer: elements in an extra shuffle buffer after the (cached) decode; ``None``: none.
      num_classes: if given, every label must be in ``[0, num_classes)``: another stops the iteration with an
        error naming it.

    Raises:
      TypeError: ``records`` is not a dataset of (string, integer) scalars.
      ValueError: bad sizes, or ``cache`` without ``shuffle_buffer``.
    """
    if not isinstance(records, tf.data.Dataset):
        raise TypeError(f"records must be a tf.data.Dataset, got {type(records).__name__}")
    spec = records.element_spec
    if (not isinstance(spec, tuple) or len(spec) < 2 or spec[0].dtype != tf.string or spec[0].shape.rank != 0
            or not spec[1].dtype.is_integer or spec[1].shape.rank != 0):  # fmt: skip
        raise TypeError(f"records must yield (encoded image string, integer label) scalars, got {spec}")
    batch_size = positive_int(batch_size, "batch_size")
    image_size = _image_size(image_size)
    if shuffle_buffer is not None:
        shuffle_buffer = positive_int(shuffle_buffer, "shuffle_buffer")
    if cache and shuffle_buffer is None:
        raise ValueError("cache=True freezes the source's order after the first pass: give shuffle_buffer "
                         "(e.g. the number of images) so every epoch is reshuffled")  # fmt: skip
    if num_classes is not None:
        num_classes = positive_int(num_classes, "num_classes")
    deterministic = seed is not None

    if len(spec) > 2 or spec[1].dtype != tf.int32:
        ds = records.map(lambda image, label, *rest: (image, tf.cast(label, tf.int32)))
    else:
        ds = records
    if cache:
        ds = ds.map(lambda x, y: (decode_image(x, image_size), y), num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic).cache()  # fmt: skip
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    load = None if cache else (lambda encoded: decode_image(encoded, image_size))
    return _load_flip_batch(ds, load, batch_size, flip, seed, deterministic, drop_remainder, num_classes)


def build_eval_dataset(
    paths: Sequence[str], batch_size: int, image_size: Sequence[int] = (112, 112)
) -> tf.data.Dataset:
    """Batches of uint8 images ``[B, H, W, 3]`` in the order of ``paths``: no shuffle, no flip, last
    partial batch kept (every image is evaluated exactly once)."""
    paths = _check_paths(paths)
    batch_size = positive_int(batch_size, "batch_size")
    image_size = _image_size(image_size)
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(
        lambda p: decode_image(tf.io.read_file(p), image_size), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def build_pk_dataset(
    paths: Sequence[str],
    labels,
    identities_per_batch: int,
    images_per_identity: int,
    image_size: Sequence[int] = (112, 112),
    seed: int | None = None,
    flip: bool = True,
    cache: bool = False,
) -> tf.data.Dataset:
    """Infinite identity-balanced ``P x K`` batches for triplet / contrastive training.

    Yields ``(images float32 [P*K, H, W, 3] in 0..255, labels int32 [P*K])``. Every batch holds exactly
    ``P = identities_per_batch`` distinct identities with ``K = images_per_identity`` images each, laid out
    identity by identity: rows ``[i*K, (i+1)*K)`` are one identity. Under ``MirroredStrategy`` the global
    batch is split into contiguous per-replica slices, so with ``P`` divisible by the replica count each
    replica gets whole identities (``P/replicas`` of them), which is what in-batch mining needs.

    Sampling (after Hermans et al. 2017, "In Defense of the Triplet Loss"):

    * identities: a fresh random permutation of all identities per cycle, cut into groups of ``P``; the
      ``num_identities % P`` left over at the end of a cycle are skipped for that cycle (a group never
      straddles two cycles, so its identities are always distinct). One cycle is
      ``num_identities // P`` batches.
    * images of an identity with ``n >= K`` images: ``K`` distinct images, uniformly at random.
    * ``n < K``: each of its ``n`` images once, plus ``K - n`` more drawn uniformly with replacement (so
      duplicates happen, but no image is left out).

    The randomness is stateless and seeded per batch from ``tf.data.Dataset.random(seed)``, so a given
    ``seed`` reproduces the stream exactly (element order is always kept: reordering would mix identities
    between batches). Flips are per image, probability 0.5.

    Args:
      paths: image files (e.g. ``FolderIndex.paths``), all decodable by ``tf.io.decode_image``.
      labels: integer identity ids, one per path; any ids (need not be contiguous).
      identities_per_batch: ``P``; at most the number of distinct identities.
      images_per_identity: ``K`` (>= 2 for triplet / contrastive positives; FaceNet used ~40, Hermans 4).
      image_size: ``(height, width)``; images of another size are resized.
      seed: makes identity order, image choice and flips reproducible; ``None`` for fresh randomness.
      flip: random horizontal flips.
      cache: decode every image once, up front, into one uint8 array in memory (``H*W*3`` bytes per image;
        37 KB at 112x112) and gather batches from it; building the dataset then takes one decoding pass.

    Raises:
      TypeError / ValueError: as :func:`build_train_dataset` for paths and labels; ``ValueError`` for a
        non-positive ``P`` or ``K`` or for more identities per batch than the data has.
    """
    paths = _check_paths(paths)
    labels = _check_labels(labels, len(paths))
    p = positive_int(identities_per_batch, "identities_per_batch")
    k = positive_int(images_per_identity, "images_per_identity")
    height, width = _image_size(image_size)
    # Images grouped by identity: identity i owns rows [offsets[i], offsets[i] + counts[i]) of `order`.
    order = np.argsort(labels, kind="stable")
    _, offsets, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if p > len(counts):
        raise ValueError(f"identities_per_batch={p} exceeds the {len(counts)} identities in the data")
    sorted_paths = tf.constant([paths[i] for i in order])
    sorted_labels = tf.constant(labels[order])
    width_keys = max(int(counts.max()), k)  # top_k needs at least k columns
    offsets = tf.constant(offsets, tf.int32)
    counts = tf.constant(counts, tf.int32)

    def sample_batch(identities, rng_seed):
        """Rows of the grouped arrays, their labels and flip coins for one batch of ``P`` identity indices."""
        n = tf.gather(counts, identities)[:, None]  # (P, 1)
        seeds = tf.random.experimental.stateless_split(rng_seed, 3)
        # The k smallest of n uniform keys are k distinct positions in random order (a partial shuffle);
        # padding keys of 2.0 sort after every real key, so for n < k the first n are a permutation of all n.
        keys = tf.random.stateless_uniform((p, width_keys), seeds[0])
        keys = tf.where(tf.range(width_keys)[None, :] < n, keys, 2.0)
        without = tf.math.top_k(-keys, k=k, sorted=True).indices
        extra = tf.cast(tf.random.stateless_uniform((p, k), seeds[1]) * tf.cast(n, tf.float32), tf.int32)
        extra = tf.minimum(extra, n - 1)  # u * n rounds up to n when u is within an ulp of 1
        position = tf.where(tf.range(k)[None, :] < n, without, extra)
        rows = tf.reshape(tf.gather(offsets, identities)[:, None] + position, [-1])
        flips = tf.random.stateless_uniform((p * k,), seeds[2]) < (0.5 if flip else 0.0)
        return rows, tf.gather(sorted_labels, rows), flips

    groups = tf.data.Dataset.range(len(counts)).map(lambda i: tf.cast(i, tf.int32))
    groups = groups.shuffle(len(counts), seed=seed, reshuffle_each_iteration=True)
    groups = groups.batch(p, drop_remainder=True).repeat()
    # One stateless [2] seed per batch; rerandomize_each_iteration: a new stream every time it is iterated.
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((groups, batch_seeds)).map(sample_batch, num_parallel_calls=AUTOTUNE, deterministic=True)

    if cache:
        decoded = build_eval_dataset([paths[i] for i in order], batch_size=256, image_size=(height, width))
        cached = tf.constant(np.concatenate([b.numpy() for b in decoded]))

        def gather(rows, batch_labels, flips):
            images = tf.gather(cached, rows)
            return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images), batch_labels

        ds = ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        def load(row, label, flip_it):
            image = decode_image(tf.io.read_file(sorted_paths[row]), (height, width))
            return tf.where(flip_it, tf.reverse(image, axis=[1]), image), label

        # One element per image so that decoding runs in parallel; deterministic=True is required, not a
        # nicety: reordering would move images between batches and break the P x K structure.
        ds = ds.unbatch().map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(p * k, drop_remainder=True)

    def finish(images, batch_labels):
        images = tf.ensure_shape(images, (p * k, height, width, 3))
        return tf.cast(images, tf.float32), tf.ensure_shape(batch_labels, (p * k,))

    return ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
