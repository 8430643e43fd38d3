"""CenterLoss: golden loss and centre update against NumPy, gradients, dtypes, config, and 2 replicas == 1."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers.center import CenterLoss


def center_reference(centers, x, labels, alpha):
    """Independent float64 NumPy center loss: per-example loss with the old centres, then the paper's update."""
    centers = np.asarray(centers, np.float64)
    x = np.asarray(x, np.float64)
    loss = 0.5 * np.sum((x - centers[labels]) ** 2, axis=1)
    new = centers.copy()
    for j in np.unique(labels):
        members = x[labels == j]
        delta = np.sum(centers[j] - members, axis=0) / (1 + len(members))
        new[j] = centers[j] - alpha * delta
    return loss, new


def make_layer(centers, alpha=0.5):
    layer = CenterLoss(centers.shape[0], alpha=alpha)
    layer.build((None, centers.shape[1]))
    layer.centers.assign(centers.astype("float32"))
    return layer


def call_fn(layer, use_function):
    fn = lambda x, y, training: layer(x, y, training=training)  # noqa: E731
    return tf.function(fn) if use_function else fn


@pytest.mark.parametrize("use_function", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 0.1, 1.0])
def test_golden_loss_and_update_over_several_steps(use_function, alpha):
    rng = np.random.default_rng(int(alpha * 10) + use_function)
    classes, dim = 7, 5
    centers = init = rng.normal(size=(classes, dim))
    layer = make_layer(centers, alpha)
    fn = call_fn(layer, use_function)
    for _ in range(3):
        # Repeated labels (n_j up to 4) and classes 5, 6 never present.
        labels = rng.choice([0, 0, 0, 1, 1, 2, 3, 4], size=10)
        x = rng.normal(scale=3.0, size=(10, dim))
        want_loss, want_centers = center_reference(centers, x, labels, alpha)
        got = fn(tf.constant(x, tf.float32), tf.constant(labels, tf.int32), True)
        assert got.dtype == tf.float32 and got.shape == (10,)
        np.testing.assert_allclose(got.numpy(), want_loss, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.centers.numpy(), want_centers, rtol=1e-5, atol=1e-5)
        centers = want_centers
    # Absent classes are untouched bit for bit.
    np.testing.assert_array_equal(layer.centers.numpy()[5:], init[5:].astype("float32"))


def test_absent_classes_untouched_and_first_step_from_zero():
    rng = np.random.default_rng(3)
    init = rng.normal(size=(6, 4)).astype("float32")
    layer = make_layer(init)
    labels = np.array([1, 3, 3, 1, 3], "int32")
    x = rng.normal(size=(5, 4)).astype("float32")
    layer(x, labels, training=True)
    after = layer.centers.numpy()
    untouched = [0, 2, 4, 5]
    np.testing.assert_array_equal(after[untouched], init[untouched])
    assert not np.allclose(after[[1, 3]], init[[1, 3]])
    # Zero init (paper): the first update moves c_j to alpha * n_j / (1 + n_j) * mean of its features.
    fresh = CenterLoss(6)
    loss = fresh(x, labels, training=True).numpy()
    np.testing.assert_allclose(loss, 0.5 * np.sum(x**2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(fresh.centers.numpy()[3], 0.5 * 3 / 4 * x[[1, 2, 4]].mean(axis=0), rtol=1e-5)


def test_non_finite_features_skip_the_update():
    rng = np.random.default_rng(8)
    init = rng.normal(size=(3, 4)).astype("float32")
    layer = make_layer(init)
    x = rng.normal(size=(4, 4)).astype("float32")
    x[2, 1] = np.inf
    loss = layer(x, np.array([0, 1, 1, 2], "int32"), training=True).numpy()
    assert np.isinf(loss[2]) and np.all(np.isfinite(loss[[0, 1, 3]]))
    np.testing.assert_array_equal(layer.centers.numpy(), init)


@pytest.mark.parametrize("training", [False, None])
def test_no_update_unless_training(training):
    rng = np.random.default_rng(4)
    init = rng.normal(size=(3, 4)).astype("float32")
    layer = make_layer(init)
    labels = np.array([0, 1, 2, 2], "int32")
    x = rng.normal(size=(4, 4)).astype("float32")
    got = layer(x, labels, training=training).numpy()
    np.testing.assert_allclose(got, center_reference(init, x, labels, 0.5)[0], rtol=1e-5)
    np.testing.assert_array_equal(layer.centers.numpy(), init)


def test_labels_shape_n_by_1_and_int64():
    rng = np.random.default_rng(5)
    init = rng.normal(size=(4, 3))
    x = rng.normal(size=(6, 3)).astype("float32")
    labels = np.array([0, 1, 1, 3, 0, 0])
    want_loss, want_centers = center_reference(init, x, labels, 0.5)
    layer = make_layer(init)
    got = layer(x, tf.constant(labels[:, None], tf.int64), training=True)
    np.testing.assert_allclose(got.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(layer.centers.numpy(), want_centers, rtol=1e-5, atol=1e-6)


def test_gradient_wrt_features_is_x_minus_c_and_none_to_centres():
    rng = np.random.default_rng(6)
    init = rng.normal(size=(4, 5))
    layer = make_layer(init)
    labels = np.array([2, 0, 2, 3], "int32")
    x = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        # training=True: the update happens after the loss read, so the gradient uses the OLD centres.
        loss = tf.reduce_sum(layer(x, labels, training=True))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), x.numpy() - init[labels], rtol=1e-5, atol=1e-6)
    assert tape.gradient(loss, layer.centers.value) is None


def test_centres_are_not_trainable():
    layer = CenterLoss(10)
    layer.build((None, 8))
    assert layer.trainable_weights == []
    assert [w.path for w in layer.non_trainable_weights] == [layer.centers.path]
    assert not layer.centers.trainable
    assert layer.centers.shape == (10, 8) and layer.centers.dtype == "float32"
    np.testing.assert_array_equal(layer.centers.numpy(), 0.0)
    # A model holding the layer exposes nothing to its optimizer either.
    inputs = keras.Input((8,))
    labels = keras.Input((), dtype="int32")
    model = keras.Model([inputs, labels], layer(inputs, labels))
    assert model.trainable_weights == []


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_float_labels_raise_type_error(dtype):
    layer = CenterLoss(3)
    x = np.zeros((2, 4), "float32")
    with pytest.raises(TypeError, match="integer"):
        layer(x, np.array([0.0, 1.0], dtype), training=True)
    with pytest.raises(TypeError, match="integer"):
        tf.function(lambda x, y: layer(x, y, training=True))(x, tf.constant([0.0, 1.0], dtype))


def test_out_of_range_labels_and_bad_shapes():
    layer = CenterLoss(3)
    x = np.zeros((2, 4), "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        layer(x, np.array([0, 3], "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        layer(x, np.array([0, -1], "int32"))
    with pytest.raises(ValueError, match="batch sizes"):
        layer(x, np.array([0, 1, 2], "int32"))
    with pytest.raises(ValueError, match="shape"):
        layer(x, np.zeros((2, 2), "int32"))
    with pytest.raises(ValueError, match="num_classes"):
        CenterLoss(0)
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(3, alpha=1.5)


def test_float16_features_give_float32_loss(mixed_precision):
    rng = np.random.default_rng(7)
    layer = CenterLoss(4)
    x = tf.constant(rng.normal(size=(6, 8)), tf.float16)
    labels = np.array([0, 1, 1, 2, 3, 0], "int32")
    loss = layer(x, labels, training=True)
    assert loss.dtype == tf.float32 and layer.centers.dtype == "float32"
    want_loss, want_centers = center_reference(np.zeros((4, 8)), x.numpy().astype(np.float64), labels, 0.5)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(layer.centers.numpy(), want_centers, rtol=1e-5, atol=1e-6)
    # Inside a mixed-precision feature model the layer still computes in float32.
    inputs = keras.Input((8,))
    features = keras.layers.Dense(8)(inputs)
    assert features.dtype == "float16"
    labels_in = keras.Input((), dtype="int32")
    assert CenterLoss(4)(features, labels_in).dtype == "float32"


def test_get_config_round_trip():
    layer = CenterLoss(11, alpha=0.25, name="centre")
    config = layer.get_config()
    assert config["num_classes"] == 11 and config["alpha"] == 0.25
    clone = CenterLoss.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, CenterLoss) and restored.get_config() == config


def test_centres_checkpoint_round_trip(tmp_path):
    layer = make_layer(np.arange(12, dtype="float32").reshape(3, 4))
    path = tf.train.Checkpoint(center=layer).write(str(tmp_path / "ckpt"))
    other = CenterLoss(3)
    other.build((None, 4))
    tf.train.Checkpoint(center=other).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(other.centers.numpy(), layer.centers.numpy())


# ------------------------------------------------------------------------------------------------ distributed
# The step below is the trainer's integration pattern: L = L_S + lambda * L_C per example, averaged over the
# GLOBAL batch (tf.nn.compute_average_loss), the centre layer called inside strategy.run with training=True.
DISTRIBUTED = """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tfface.layers import ArcFace
    from tfface.layers.center import CenterLoss
    from tfface.train.strategy import make_strategy

    CLASSES, BATCH, STEPS, LAMBDA = 5, 8, 3, 0.1
    SUM = tf.distribute.ReduceOp.SUM
    # Every global batch has classes on both halves (= both replicas), with different counts per half,
    # so per-replica updates with local counts would give different centres. Class 4 never appears.
    y = np.array([[0, 1, 1, 2, 0, 0, 3, 1], [2, 2, 0, 3, 3, 2, 1, 0], [1, 0, 0, 0, 1, 3, 3, 2]], "int32").ravel()
    x = np.random.default_rng(0).normal(size=(len(y), 6)).astype("float32")

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((6,))
            model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
            head = ArcFace(CLASSES, s=8.0, m=0.3)
            head.build((None, 4))
            center = CenterLoss(CLASSES, alpha=0.5)
            center.build((None, 4))   # variables cannot be created inside strategy.run
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
            variables = model.trainable_variables + head.trainable_variables
            optimizer.build(variables)

        def step_fn(images, labels):
            with tf.GradientTape() as tape:
                features = model(images, training=True)
                logits = head(features, labels, training=True)
                softmax = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                per_example = softmax + LAMBDA * center(features, labels, training=True)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=BATCH)
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        @tf.function
        def step(iterator):
            return strategy.reduce(SUM, strategy.run(step_fn, args=next(iterator)), axis=None)

        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
        it = iter(strategy.experimental_distribute_dataset(ds))
        losses = [float(step(it)) for _ in range(STEPS)]
        return (strategy.num_replicas_in_sync, losses, center.centers.numpy(),
                [v.numpy() for v in model.weights + head.weights])

    def reference(centers, x, labels, alpha=0.5):
        new = centers.copy()
        for j in np.unique(labels):
            new[j] = centers[j] - alpha * np.sum(centers[j] - x[labels == j], 0) / (1 + np.sum(labels == j))
        return new

    mirrored = make_strategy("mirrored")
    results = {"default": train(tf.distribute.get_strategy()), "one_device": train(make_strategy("one_device")),
               "mirrored": train(mirrored)}
    assert [r[0] for r in results.values()] == [1, 1, 2], [r[0] for r in results.values()]
    _, loss1, c1, w1 = results["one_device"]
    assert np.abs(c1[:4]).min() > 0 and np.all(c1[4] == 0), c1
    for name, (_, loss, c, w) in results.items():
        np.testing.assert_allclose(loss, loss1, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(c, c1, rtol=1e-5, atol=1e-6, err_msg=name)
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(w, w1))
        assert worst < 1e-5, (name, worst)
    print("max centre difference", float(np.max(np.abs(results["mirrored"][2] - c1))))

    # Fixed features: the mirrored update equals the NumPy global-batch rule, and differs from the rule
    # applied per replica with local sums and counts (so the check above is able to fail).
    with mirrored.scope():
        center = CenterLoss(CLASSES, alpha=0.5)
        center.build((None, 6))

    @tf.function
    def update(iterator):
        mirrored.run(lambda f, l: center(f, l, training=True), args=next(iterator))

    it = iter(mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)))
    want = local = np.zeros((CLASSES, 6))
    for k in range(STEPS):
        update(it)
        xb, yb = x[k * BATCH:(k + 1) * BATCH].astype(np.float64), y[k * BATCH:(k + 1) * BATCH]
        want = reference(want, xb, yb)
        half = BATCH // 2
        local = reference(reference(local, xb[:half], yb[:half]), xb[half:], yb[half:])
        np.testing.assert_allclose(center.centers.numpy(), want, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(local - want)) > 1e-2
    # Uneven final batches: 5 rows split 3 + 2, and 1 row split 1 + 0 (an empty replica).
    for rows in (5, 1):
        xb, yb = x[:rows], y[:rows]
        update(iter(mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((xb, yb)).batch(rows))))
        want = reference(want, xb.astype(np.float64), yb)
        np.testing.assert_allclose(center.centers.numpy(), want, rtol=1e-5, atol=1e-6)
    print("mirrored update matches the global-batch reference")

    with mirrored.scope():
        unbuilt = CenterLoss(CLASSES)
    try:
        mirrored.run(tf.function(lambda f, l: unbuilt(f, l, training=True)), args=(x[:4], y[:4]))
        raise AssertionError("building inside strategy.run should fail")
    except RuntimeError as e:
        assert "strategy.scope()" in str(e), e
    print("clear error when built inside strategy.run")
"""


def test_mirrored_two_replicas_match_one_device(run_cpu_script):
    stdout = run_cpu_script(DISTRIBUTED)
    assert "max centre difference" in stdout
    assert "mirrored update matches the global-batch reference" in stdout
    assert "clear error when built inside strategy.run" in stdout
