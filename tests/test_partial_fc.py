"""Partial FC: rate 1 is the full head; sampled subsets, remapped labels, sparse gradients, determinism."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers.heads import build_head
from tfface.layers.partial_fc import PartialFC

D = 8
HEADS = {
    "arcface": {},
    "cosface": {},
    "combined": {"m1": 0.9, "m2": 0.4, "m3": 0.15},
    "normface": {"learn_s": True},
    "subcenter": {"k": 3},
    "sphereface": {},
    "softmax": {},
}


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)  # kernels are initialised randomly: make every test deterministic


def _data(batch=6, classes=40, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, D)).astype("float32"))
    y = tf.constant(rng.integers(0, classes, batch).astype("int32"))
    return x, y


def _ce(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_rate_one_equals_full_head(name):
    x, y = _data()
    head = build_head(name, 40, **HEADS[name])
    head.build((None, D))
    if getattr(head, "bias", None) is not None:
        head.bias.assign(np.linspace(-1, 1, 40).astype("float32"))
    pfc = PartialFC(head, rate=1.0)
    pfc.build((None, D))
    np.testing.assert_array_equal(pfc.kernel.numpy(), head.kernel.numpy().T)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        full = head(x, y, training=True)
        part, used = pfc(x, y, training=True)
        loss_full, loss_part = _ce(full, y), _ce(part, used)
    np.testing.assert_array_equal(used.numpy(), y.numpy())
    np.testing.assert_allclose(part.numpy(), full.numpy(), rtol=1e-5, atol=2e-5)
    # Same formulas, different summation orders (row- vs column-normalised kernel): float32 rounding of cos,
    # amplified by s = 64 and the margins' derivatives, so tolerances are relative to the gradient's scale.
    gx_full = tape.gradient(loss_full, x).numpy()
    np.testing.assert_allclose(tape.gradient(loss_part, x), gx_full, rtol=1e-4, atol=1e-4 * np.abs(gx_full).max())
    gk_full = tape.gradient(loss_full, head.kernel).numpy().T
    gk_part = tf.convert_to_tensor(tape.gradient(loss_part, pfc.kernel)).numpy()
    np.testing.assert_allclose(gk_part, gk_full, rtol=1e-4, atol=1e-4 * np.abs(gk_full).max())
    # Inference and labels=None are the full head too.
    np.testing.assert_allclose(pfc(x)[...], head(x), rtol=1e-5, atol=2e-5)


def test_sample_contains_positives_sorted_unique_deterministic():
    pfc = PartialFC(build_head("arcface", 1000), rate=0.1, seed=3)
    pfc.build((None, D))
    labels = tf.constant([5, 999, 5, 0, 123])
    s1 = pfc.sample(labels, 7).numpy()
    assert s1.shape == (100,) and np.all(np.diff(s1) > 0) and s1.min() >= 0 and s1.max() < 1000
    assert {0, 5, 123, 999} <= set(s1.tolist())
    np.testing.assert_array_equal(pfc.sample(labels, 7), s1)  # same (seed, step): same subset
    assert not np.array_equal(pfc.sample(labels, 8).numpy(), s1)
    other = PartialFC(build_head("arcface", 1000), rate=0.1, seed=4)
    assert not np.array_equal(other.sample(labels, 7).numpy(), s1)
    # More distinct positives than ceil(rate * C): all are kept.
    many = tf.range(0, 1000, 7)  # 143 > 100
    s2 = pfc.sample(many, 1).numpy()
    np.testing.assert_array_equal(s2, np.arange(0, 1000, 7))
    assert PartialFC(build_head("cosface", 30), rate=0.34).num_sampled == 11  # ceil(10.2)


def test_negatives_uniform():
    classes, rate, draws = 20, 0.25, 600
    pfc = PartialFC(build_head("arcface", classes), rate=rate)
    sample = tf.function(lambda i: pfc.sample(tf.constant([3]), i))
    counts = np.zeros(classes)
    for i in range(draws):
        counts[sample(tf.constant(i, tf.int64)).numpy()] += 1
    assert counts[3] == draws
    neg = np.delete(counts, 3)
    assert neg.sum() == draws * 4
    expected = draws * 4 / 19
    chi2 = float(np.sum((neg - expected) ** 2 / expected))
    assert chi2 < 42.3, chi2  # chi^2 with 18 dof: P(> 42.3) = 0.001


@pytest.mark.parametrize("name", ["arcface", "subcenter", "sphereface", "softmax", "normface"])
def test_sampled_logits_are_full_logits_at_sampled_columns(name):
    x, y = _data(batch=5, classes=50, seed=1)
    pfc = PartialFC(build_head(name, 50, **HEADS[name]), rate=0.2, seed=1)
    pfc.build((None, D))
    if pfc.bias is not None:
        pfc.bias.assign(np.linspace(-1, 1, 50).astype("float32"))
    pfc.iterations.assign(41)
    full = pfc.full_head()  # iterations copied: SphereFace's lambda at the same step
    with tf.GradientTape(persistent=True) as tape:
        logits, local = pfc(x, y, training=True)  # iterations -> 42
        loss = _ce(logits, local)
    classes = pfc.sample(y, 42).numpy()
    assert logits.shape == (5, 10) and pfc.iterations.numpy() == 42
    np.testing.assert_array_equal(classes[local.numpy()], y.numpy())
    expected = full(x, y, training=True).numpy()[:, classes]
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=2e-5)
    grad = tape.gradient(loss, pfc.kernel)
    assert isinstance(grad, tf.IndexedSlices)
    k = HEADS[name].get("k", 1)
    rows = (classes[:, None] * k + np.arange(k)).ravel()
    dense = tf.convert_to_tensor(grad).numpy()
    touched = np.flatnonzero(np.any(dense != 0, axis=1))
    assert set(touched) <= set(rows)
    outside = np.setdiff1d(np.arange(50 * k), rows)
    assert np.all(dense[outside] == 0)
    if k == 1:
        assert set(touched) == set(rows)  # every sampled centre is in the softmax, so gets a gradient


def test_sgd_momentum_step_moves_only_sampled_rows_first():
    x, y = _data(batch=4, classes=30, seed=2)
    # s = 4: with s = 64 most negative rows get gradients below float32 resolution of the weights.
    pfc = PartialFC(build_head("cosface", 30, s=4.0), rate=0.2)
    pfc.build((None, D))
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(pfc.trainable_variables)
    sampled = []
    for step in range(2):
        before = pfc.kernel.numpy().copy()
        with tf.GradientTape() as tape:
            logits, local = pfc(x, y, training=True)
            loss = _ce(logits, local)
        opt.apply_gradients(zip(tape.gradient(loss, pfc.trainable_variables), pfc.trainable_variables, strict=True))
        sampled.append(set(pfc.sample(y, step + 1).numpy().tolist()))
        moved = set(np.flatnonzero(np.any(pfc.kernel.numpy() != before, axis=1)).tolist())
        # Keras SGD keeps dense momentum: rows sampled at step 1 keep moving at step 2 (PartialFC_V2 semantics).
        assert moved == set().union(*sampled), (step, moved)
    assert pfc.iterations.numpy() == 2


def test_config_round_trip_and_refusals():
    pfc = PartialFC(build_head("combined", 20, m1=1.0, m2=0.3, m3=0.2), rate=0.5, seed=9, name="pfc")
    pfc.build((None, D))
    clone = PartialFC.from_config(pfc.get_config())
    clone.build((None, D))
    clone.set_weights(pfc.get_weights())
    assert (clone.rate, clone.seed, clone.head.m3, clone.num_sampled) == (0.5, 9, 0.2, 10)
    x, y = _data(batch=3, classes=20)
    np.testing.assert_array_equal(clone(x, y, training=True)[0], pfc(x, y, training=True)[0])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pfc))
    assert isinstance(restored, PartialFC) and type(restored.head).__name__ == "CombinedMargin"
    with pytest.raises(TypeError, match="PartialFC wraps"):
        PartialFC(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="rate"):
        PartialFC(build_head("arcface", 5), rate=0.0)
    with pytest.raises(TypeError, match="integer"):
        pfc(x, tf.cast(y, tf.float32), training=True)


# Both replicas must draw the same subset (from the all-gathered labels) and the summed sparse gradient must
# equal one device's on the global batch. Own process: MirroredStrategy instances collide (test_strategy.py).
MIRRORED = """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfface.layers.heads import build_head
    from tfface.layers.partial_fc import PartialFC

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8)).astype("float32")
    y = rng.integers(0, 200, 8).astype("int32")
    kernel = rng.normal(size=(200, 8)).astype("float32")

    def grads(strategy):
        with strategy.scope():
            pfc = PartialFC(build_head("arcface", 200), rate=0.05, seed=1)
            pfc.build((None, 8))
            pfc.kernel.assign(kernel)
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

        def step(xb, yb):
            with tf.GradientTape() as tape:
                logits, local = pfc(xb, yb, training=True)
                per = tf.nn.sparse_softmax_cross_entropy_with_logits(local, logits)
                loss = tf.nn.compute_average_loss(per, global_batch_size=8)
            g = tf.convert_to_tensor(tape.gradient(loss, pfc.kernel))
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce("sum", g), tf.shape(logits)[1]

        g, width = strategy.run(tf.function(step), args=next(iter(ds)))
        g = strategy.experimental_local_results(g)
        width = strategy.experimental_local_results(width)
        return g, width, int(pfc.iterations.numpy())

    g2, w2, it2 = grads(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    g1, w1, it1 = grads(tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert len(g2) == 2 and it1 == it2 == 1, (len(g2), it1, it2)
    assert len(set(int(w) for w in w2 + w1)) == 1, (w2, w1)  # same subset size on every replica
    np.testing.assert_allclose(g2[0].numpy(), g1[0].numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g2[1].numpy(), g1[0].numpy(), rtol=1e-4, atol=1e-7)
    print("ok")
"""


def test_mirrored_replicas_share_the_subset(run_cpu_script):
    assert "ok" in run_cpu_script(MIRRORED, timeout=300)


def test_real_train_step_updates_only_sampled_rows():
    # Needs the step.py wiring (PartialFC returns (logits, remapped labels); sparse L2 decay).
    from tfface.train.step import make_train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 40, 16).astype("int32")
    strategy = tf.distribute.get_strategy()
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(D)(inputs))
    pfc = PartialFC(build_head("arcface", 40, s=8.0, m=0.3), rate=0.25, seed=1)
    pfc.build((None, D))
    step = make_train_step(strategy, model, keras.optimizers.SGD(0.1, momentum=0.9), 8, l2_decay=5e-4, head=pfc)
    it = iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    before = pfc.kernel.numpy().copy()
    loss, acc = step(it)
    assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0
    sampled = pfc.sample(y[:8], 1).numpy()
    moved = np.flatnonzero(np.any(pfc.kernel.numpy() != before, axis=1))
    assert set(moved) <= set(sampled) and len(moved) > 0  # sparse gradient and sparse decay
    step(it)
    assert int(pfc.iterations.numpy()) == 2
