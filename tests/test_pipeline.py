"""tf.data pipeline: decoding, scan -> train integration, flips, determinism, caching, input checks, P x K sampler."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfface.data.folder import scan_image_folder
from tfface.data.pipeline import (
    build_eval_dataset,
    build_pk_dataset,
    build_train_dataset,
    build_train_dataset_from_records,
    decode_image,
)

SIZE = (16, 12)  # small images keep the suite fast on two shared cores


def _save(path, image: np.ndarray) -> str:
    """Writes an RGB (or grey / RGBA / 16-bit) array with cv2, which expects BGR channel order."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), image)
    return str(path)


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def asymmetric(tmp_path_factory):
    """One file whose left half is black and right half white: a flip is unambiguous."""
    image = np.zeros((*SIZE, 3), np.uint8)
    image[:, SIZE[1] // 2 :] = 255
    return _save(tmp_path_factory.mktemp("asym") / "a.png", image)


def test_decode_image_colour_conversions(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 120, 250
    cases = {
        "rgb.png": (rgb, rgb),
        "grey.png": (np.full((4, 6), 77, np.uint8), np.full((4, 6, 3), 77, np.uint8)),
        "rgba.png": (np.dstack([rgb, np.full((4, 6), 9, np.uint8)]), rgb),  # alpha dropped
        "deep.png": (np.full((4, 6, 3), 0xAB12, np.uint16), np.full((4, 6, 3), 0xAB, np.uint8)),  # 16-bit
        "rgb.bmp": (rgb, rgb),
    }
    for name, (stored, expected) in cases.items():
        encoded = tf.io.read_file(_save(tmp_path / name, stored))
        decoded = decode_image(encoded, image_size=None)
        assert decoded.dtype == tf.uint8 and decoded.shape == (4, 6, 3), name
        np.testing.assert_array_equal(decoded.numpy(), expected, err_msg=name)

    jpeg = tf.io.read_file(_save(tmp_path / "rgb.jpg", rgb))
    resized = decode_image(jpeg, image_size=(8, 3))
    assert resized.shape == (8, 3, 3) and resized.dtype == tf.uint8
    np.testing.assert_allclose(resized.numpy().reshape(-1, 3).mean(0), [10, 120, 250], atol=4)
    # Inside a graph, too (this is how Dataset.map runs it).
    graph_fn = tf.function(lambda s: decode_image(s, (4, 6)))
    np.testing.assert_array_equal(graph_fn(jpeg).numpy(), decode_image(jpeg, None).numpy())


def test_scan_then_train_over_good_images_only(tmp_path):
    """Planted truncated JPEG + text named .jpg: the scan reports both, the dataset runs over the rest."""
    colours = {"ann": (200, 30, 30), "ben": (30, 200, 30), "cid": (30, 30, 200)}
    root = tmp_path / "faces"
    for name, colour in colours.items():
        for i in range(3):
            _save(root / name / f"{name}_{i:04d}.jpg", np.full((*SIZE, 3), colour, np.uint8))
    good = (root / "ben" / "ben_0000.jpg").read_bytes()
    (root / "ben" / "ben_0099.jpg").write_bytes(good[: len(good) - 20])
    (root / "cid" / "cid_0099.jpg").write_text("just text")

    index = scan_image_folder(root, num_workers=2)
    assert sorted(os.path.basename(p) for p, _ in index.bad_files) == ["ben_0099.jpg", "cid_0099.jpg"]

    ds = build_train_dataset(index.paths, index.labels, batch_size=4, image_size=SIZE, seed=0,
                             drop_remainder=False)  # fmt: skip
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    images, labels = _collect(ds)
    assert images.shape == (9, *SIZE, 3) and labels.shape == (9,)
    assert images.min() >= 0.0 and images.max() <= 255.0 and images.max() > 150.0  # 0..255, not normalised
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Each image carries its folder's colour, so label == sorted folder index is checked on the pixels.
    for image, label in zip(images, labels, strict=True):
        expected = colours[index.classes[label]]
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected, atol=6)


def test_static_batch_shape_and_repeat(asymmetric):
    ds = build_train_dataset([asymmetric] * 5, [3] * 5, batch_size=2, image_size=SIZE, repeat=True)
    assert ds.element_spec[0].shape == (2, *SIZE, 3) and ds.element_spec[1].shape == (2,)
    batches = list(ds.take(7))  # 7 batches of 2 > 5 images: repeats across epochs
    assert len(batches) == 7 and all(y.numpy().tolist() == [3, 3] for _, y in batches)


def _flipped_fraction(images: np.ndarray) -> float:
    left_dark = images[:, :, 0, 0] < 128  # first column of each image
    flipped = ~left_dark.all(axis=1)
    return float(flipped.mean())


def test_random_flip_happens_about_half_the_time(asymmetric):
    original = decode_image(tf.io.read_file(asymmetric), SIZE).numpy().astype(np.float32)
    ds = build_train_dataset([asymmetric] * 400, np.zeros(400, np.int64), batch_size=100, image_size=SIZE,
                             seed=123)  # fmt: skip  # seeded: a statistical test must not be flaky
    images, _ = _collect(ds)
    for image in images[:20]:  # every output is exactly the original or its mirror image
        assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])
    assert 0.4 < _flipped_fraction(images) < 0.6  # 400 fair coin flips: 6 sigma = 0.15, this is 4 sigma

    no_flip = build_train_dataset([asymmetric] * 50, np.zeros(50, int), batch_size=50, image_size=SIZE,
                                  flip=False)  # fmt: skip
    assert _flipped_fraction(_collect(no_flip)[0]) == 0.0


def test_seed_makes_batches_reproducible_and_epochs_differ(tmp_path):
    paths = []
    for i in range(12):
        image = np.full((*SIZE, 3), 10 + i * 10, np.uint8)
        image[:, : SIZE[1] // 2] = 0  # asymmetric, so that flips are visible
        paths.append(_save(tmp_path / f"{i}.png", image))
    labels = np.arange(12)

    def run(seed, cache=False, epochs=1):
        ds = build_train_dataset(paths, labels, batch_size=4, image_size=SIZE, seed=seed, cache=cache)
        return [_collect(ds) for _ in range(epochs)]

    (a_img, a_lab), (a2_img, a2_lab) = run(1, epochs=2)
    (b_img, b_lab), = run(1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert sorted(a_lab.tolist()) == list(range(12))  # a permutation: nothing lost or duplicated
    assert not np.array_equal(a_lab, np.arange(12))  # shuffled
    # The next epoch reshuffles and reflips.
    assert not (np.array_equal(a_lab, a2_lab) and np.array_equal(a_img, a2_img))
    (c_img, c_lab), = run(2)
    assert not (np.array_equal(a_lab, c_lab) and np.array_equal(a_img, c_img))
    # Caching decoded images changes where decoding happens, not what comes out.
    (d_img, d_lab), = run(1, cache=True)
    np.testing.assert_array_equal(a_img, d_img)
    np.testing.assert_array_equal(a_lab, d_lab)


def test_no_shuffle_keeps_order_and_eval_dataset(tmp_path):
    paths = [_save(tmp_path / f"{i}.jpg", np.full((*SIZE, 3), i * 20, np.uint8)) for i in range(5)]
    ds = build_train_dataset(paths, np.arange(5), batch_size=2, image_size=SIZE, shuffle=False, flip=False,
                             drop_remainder=False)  # fmt: skip
    assert _collect(ds)[1].tolist() == [0, 1, 2, 3, 4]

    ev = build_eval_dataset(paths, batch_size=2, image_size=SIZE)
    batches = [b.numpy() for b in ev]
    assert [b.shape[0] for b in batches] == [2, 2, 1]  # the last partial batch is kept
    assert all(b.dtype == np.uint8 for b in batches)
    means = np.concatenate(batches).reshape(5, -1).mean(1)
    np.testing.assert_allclose(means, np.arange(5) * 20, atol=2)


def test_bad_arguments_get_clear_errors(asymmetric):
    paths = [asymmetric] * 4
    with pytest.raises(TypeError, match="integer class ids.*float"):
        build_train_dataset(paths, [0.0, 1.0, 0.0, 1.0], batch_size=2)
    with pytest.raises(TypeError, match="integer class ids.*bool"):
        build_train_dataset(paths, [True, False, True, False], batch_size=2)
    with pytest.raises(ValueError, match="non-negative.*-1"):
        build_train_dataset(paths, [0, -1, 0, 1], batch_size=2)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        build_train_dataset(paths, [0, 1], batch_size=2)
    with pytest.raises(ValueError, match="no batch"):
        build_train_dataset(paths, [0] * 4, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        build_train_dataset(paths, [0] * 4, batch_size=0)
    with pytest.raises(ValueError, match="image_size"):
        build_train_dataset(paths, [0] * 4, batch_size=2, image_size=(112,))
    with pytest.raises(ValueError, match="empty"):
        build_train_dataset([], [], batch_size=2)
    with pytest.raises(TypeError, match="single string"):
        build_eval_dataset(asymmetric, batch_size=2)
    # Fewer images than a batch is fine when the data repeats.
    assert next(iter(build_train_dataset(paths, [0] * 4, batch_size=8, image_size=SIZE, repeat=True)))


def _asymmetric_files(tmp_path, n=12):
    paths = []
    for i in range(n):
        image = np.full((*SIZE, 3), 10 + i * 10, np.uint8)
        image[:, : SIZE[1] // 2] = 0  # asymmetric, so that flips are visible
        paths.append(_save(tmp_path / f"{i}.png", image))
    return paths


def _records(paths, labels, with_source=False):
    encoded = [open(p, "rb").read() for p in paths]
    if with_source:
        return tf.data.Dataset.from_tensor_slices((encoded, labels, [os.path.basename(p) for p in paths]))
    return tf.data.Dataset.from_tensor_slices((encoded, labels))


def test_records_give_the_same_batches_as_files(tmp_path):
    paths = _asymmetric_files(tmp_path)
    labels = np.arange(12)
    for seed in (1, 2):
        files = _collect(build_train_dataset(paths, labels, batch_size=4, image_size=SIZE, shuffle=False, seed=seed))
        for with_source in (False, True):  # int64 labels and a third component, as tfrecord_dataset gives
            ds = build_train_dataset_from_records(_records(paths, labels, with_source), batch_size=4, image_size=SIZE,
                                                  seed=seed)  # fmt: skip
            assert ds.element_spec[0].shape == (4, *SIZE, 3) and ds.element_spec[0].dtype == tf.float32
            assert ds.element_spec[1].shape == (4,) and ds.element_spec[1].dtype == tf.int32
            records = _collect(ds)
            np.testing.assert_array_equal(records[0], files[0])
            np.testing.assert_array_equal(records[1], files[1])
        flipped = (files[0][:, :, -1].max(axis=(1, 2)) == 0).sum()  # the black half moved to the right
        assert 0 < flipped < 12  # the comparison covers flipped and unflipped images
    # Cached (decoded once, reshuffled through the buffer every epoch): the same multiset of images per epoch.
    ds = build_train_dataset_from_records(_records(paths, labels), batch_size=4, image_size=SIZE, seed=3, cache=True,
                                          shuffle_buffer=12, flip=False, repeat=True)  # fmt: skip
    labels_seen = np.concatenate([y.numpy() for _, y in ds.take(6)])
    for epoch in (labels_seen[:12], labels_seen[12:]):
        assert sorted(epoch.tolist()) == list(range(12)) and not np.array_equal(epoch, np.arange(12))
    assert not np.array_equal(labels_seen[:12], labels_seen[12:])  # reshuffled, not frozen by the cache


def test_records_flip_statistics_and_checks(asymmetric):
    encoded = open(asymmetric, "rb").read()
    records = tf.data.Dataset.from_tensor_slices(([encoded] * 400, np.zeros(400, np.int32)))
    images, _ = _collect(build_train_dataset_from_records(records, batch_size=100, image_size=SIZE, seed=7))
    original = decode_image(tf.constant(encoded), SIZE).numpy().astype(np.float32)
    assert all(np.array_equal(x, original) or np.array_equal(x, original[:, ::-1]) for x in images[:20])
    assert 0.4 < _flipped_fraction(images) < 0.6  # 400 fair coins: 4 sigma
    unflipped = build_train_dataset_from_records(records.take(50), batch_size=50, image_size=SIZE, flip=False)
    assert _flipped_fraction(_collect(unflipped)[0]) == 0.0

    labelled = tf.data.Dataset.from_tensor_slices(([encoded] * 4, np.array([0, 1, 5, 2], np.int32)))
    ds = build_train_dataset_from_records(labelled, batch_size=2, image_size=SIZE, seed=0, num_classes=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range for 5 classes"):
        _collect(ds)
    in_range = build_train_dataset_from_records(labelled, batch_size=2, image_size=SIZE, seed=0, num_classes=6)
    assert _collect(in_range)[1].tolist() == [0, 1, 5, 2]
    with pytest.raises(ValueError, match="shuffle_buffer"):
        build_train_dataset_from_records(labelled, batch_size=2, cache=True)
    with pytest.raises(TypeError, match="integer label"):
        build_train_dataset_from_records(tf.data.Dataset.from_tensor_slices(([encoded], [0.5])), batch_size=2)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        build_train_dataset_from_records([(encoded, 0)], batch_size=2)


PK_COUNTS = {3: 1, 7: 2, 8: 5, 10: 3, 20: 6}  # label -> images; non-contiguous ids, two with fewer than K=3


@pytest.fixture(scope="module")
def pk_files(tmp_path_factory):
    """Image i of identity y: right half (10 i + 5, 10 y, 255), left half black (so a flip is visible).
    Files are listed interleaved, not grouped by identity, as a scan of several folders would not be."""
    root = tmp_path_factory.mktemp("pk")
    entries = [(y, j) for j in range(max(PK_COUNTS.values())) for y in PK_COUNTS if j < PK_COUNTS[y]]
    paths, labels = [], []
    for i, (y, _) in enumerate(entries):
        image = np.zeros((*SIZE, 3), np.uint8)
        image[:, SIZE[1] // 2 :] = (10 * i + 5, 10 * y, 255)
        paths.append(_save(root / f"{i:02d}.png", image))
        labels.append(y)
    return paths, np.array(labels)


def _pk_batches(paths, labels, n, **kwargs):
    ds = build_pk_dataset(paths, labels, identities_per_batch=2, images_per_identity=3, image_size=SIZE, **kwargs)
    assert ds.element_spec[0].shape == (6, *SIZE, 3) and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape == (6,) and ds.element_spec[1].dtype == tf.int32
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_pk_batches_are_identity_balanced_and_match_files(pk_files):
    paths, labels = pk_files
    batches = _pk_batches(paths, labels, 12, seed=3)
    flipped = 0
    for cycle in range(6):  # 5 identities // P=2: two batches per cycle, one identity sits each cycle out
        ids = [y for _, batch_labels in batches[2 * cycle : 2 * cycle + 2] for y in batch_labels[::3]]
        assert len(set(ids)) == 4  # without replacement within a cycle
    for images, batch_labels in batches:
        groups = batch_labels.reshape(2, 3)  # identity-major: rows [i*K, (i+1)*K) are one identity
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
        for group in range(2):
            files = []
            for image, label in zip(images[3 * group : 3 * group + 3], groups[group], strict=True):
                left_black, right_black = image[:, 0].max() == 0, image[:, -1].max() == 0
                assert left_black != right_black  # the original or its mirror image, nothing else
                flipped += int(right_black)
                index = (int(image[..., 0].max()) - 5) // 10
                assert labels[index] == label and image[..., 1].max() == 10 * label  # label matches its file
                files.append(index)
            label = groups[group, 0]
            if PK_COUNTS[label] >= 3:
                assert len(set(files)) == 3  # K distinct images
            else:  # every image of a small identity, topped up with repeats
                assert set(files) == set(np.flatnonzero(labels == label))
    assert 0 < flipped < 72
    assert not _pk_batches(paths, labels, 1, seed=3, flip=False)[0][0][:, :, 0].any()  # no flips: left stays black


def test_pk_seed_reproducible_and_cache_equivalent(pk_files):
    paths, labels = pk_files
    a = _pk_batches(paths, labels, 6, seed=11)
    for other in (_pk_batches(paths, labels, 6, seed=11), _pk_batches(paths, labels, 6, seed=11, cache=True)):
        for (xa, ya), (xb, yb) in zip(a, other, strict=True):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)
    c = _pk_batches(paths, labels, 6, seed=12)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    # Images of an identity vary between batches (it is a sample, not a fixed K).
    picks = {tuple(sorted(x[i, ..., 0].max() for i in range(3 * g, 3 * g + 3)))
             for x, y in _pk_batches(paths, labels, 20, seed=1) for g in range(2) if y[3 * g] == 20}  # fmt: skip
    assert len(picks) > 1


def test_pk_bad_arguments(pk_files):
    paths, labels = pk_files
    with pytest.raises(ValueError, match="exceeds the 5 identities"):
        build_pk_dataset(paths, labels, 6, 2)
    with pytest.raises(ValueError, match="images_per_identity"):
        build_pk_dataset(paths, labels, 2, 0)
    with pytest.raises(ValueError, match="identities_per_batch"):
        build_pk_dataset(paths, labels, 0, 2)
    with pytest.raises(TypeError, match="integer class ids"):
        build_pk_dataset(paths, labels.astype(float), 2, 2)
