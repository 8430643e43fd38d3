"""WeightEMA: the ramped update against NumPy, MirroredStrategy, checkpoints, swapping and export."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.serving.exporter import export_saved_model
from tfface.train.ema import WeightEMA, averaged_variables, ema_checkpoint_has_shadows, restore_averages_into


def numpy_ema(history, decay):
    """shadow_0 = w_0; shadow_t = d_t shadow_{t-1} + (1 - d_t) w_t, d_t = min(decay, (1+t)/(10+t))."""
    shadow = history[0].copy()
    for t, w in enumerate(history[1:], start=1):
        d = min(decay, (1.0 + t) / (10.0 + t))
        shadow = d * shadow + (1.0 - d) * w
    return shadow


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    return keras.Model(inputs, keras.layers.UnitNormalization()(x))


def test_ramped_update_matches_numpy_and_tf_ema():
    w = tf.Variable(np.zeros(3, np.float32))
    ema = WeightEMA([w], decay=0.9)
    tf_ema = tf.train.ExponentialMovingAverage(0.9, num_updates=tf.Variable(0, dtype=tf.int64))
    tf_ema.apply([w])  # shadow = initial w, like ours
    rng = np.random.default_rng(0)
    history = [w.numpy()]
    for t in range(1, 120):  # the ramp (1+t)/(10+t) reaches 0.9 at t = 80: both regimes are exercised
        w.assign(rng.normal(size=3).astype(np.float32))
        history.append(w.numpy())
        ema.update(t)
        tf_ema._num_updates.assign(t)
        tf_ema.apply([w])
    np.testing.assert_allclose(ema.shadows[0].numpy(), numpy_ema(history, 0.9), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ema.shadows[0].numpy(), tf_ema.average(w).numpy(), rtol=1e-5, atol=1e-6)
    assert float(ema.decay_at(1)) == pytest.approx(2 / 11)
    assert float(ema.decay_at(10**6)) == pytest.approx(0.9)


def test_update_inside_tf_function_after_apply_gradients_uses_iterations():
    model = tiny_model()
    opt = keras.optimizers.SGD(0.1)
    variables = averaged_variables(model)
    trainable = model.trainable_variables
    opt.build(trainable)
    ema = WeightEMA(variables, decay=0.5)  # crosses the ramp at t = 8: both regimes are exercised
    x = np.random.default_rng(1).uniform(0, 255, (6, 8, 8, 3)).astype(np.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True)[:, 0])
        opt.apply_gradients(zip(tape.gradient(loss, trainable), trainable, strict=True))
        ema.update(opt.iterations)

    history = [[v.numpy() for v in variables]]
    for _ in range(12):
        step()
        history.append([v.numpy() for v in variables])
    for i, shadow in enumerate(ema.shadows):
        np.testing.assert_allclose(shadow.numpy(), numpy_ema([h[i] for h in history], 0.5), rtol=1e-5, atol=1e-6)


def test_averaged_variables_include_bn_statistics_by_default():
    model = tiny_model()
    names = [v.path.split("/")[-1] for v in averaged_variables(model)]
    assert sorted(names) == sorted(["kernel", "bias", "gamma", "beta", "kernel", "bias", "moving_mean",
                                    "moving_variance"])
    assert "moving_mean" not in [v.path.split("/")[-1] for v in averaged_variables(model, bn_statistics=False)]


def test_swapped_restores_raw_weights_even_on_exception():
    w = tf.Variable([1.0, 2.0])
    ema = WeightEMA([w], decay=0.99)
    w.assign([5.0, 6.0])
    ema.update(1)  # d = 2/11
    expected = 2 / 11 * np.array([1.0, 2.0]) + 9 / 11 * np.array([5.0, 6.0])
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped():
            np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
            raise RuntimeError("boom")
    np.testing.assert_allclose(w.numpy(), [5.0, 6.0])
    with ema.swapped(enabled=False):
        np.testing.assert_allclose(w.numpy(), [5.0, 6.0])


def test_checkpoint_keeps_raw_and_shadow_weights(tmp_path):
    model = tiny_model(0)
    ema = WeightEMA(averaged_variables(model), decay=0.9)
    for v in model.trainable_variables:
        v.assign(v + 1.0)
    ema.update(3)
    raw = [v.numpy() for v in model.weights]
    shadows = [s.numpy() for s in ema.shadows]
    path = tf.train.Checkpoint(model=model, ema=ema).save(str(tmp_path / "ckpt"))
    assert ema_checkpoint_has_shadows(path)

    again = tiny_model(1)  # other initial weights
    ema2 = WeightEMA(averaged_variables(again), decay=0.9)
    tf.train.Checkpoint(model=again, ema=ema2).restore(path).assert_consumed()
    for a, b in zip(raw, [v.numpy() for v in again.weights], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(shadows, [s.numpy() for s in ema2.shadows], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(raw[0], shadows[0])

    # The averages straight into a fresh model, without a WeightEMA (what export from a work dir does).
    third = tiny_model(2)
    restore_averages_into(averaged_variables(third), path)
    for a, b in zip(shadows, [v.numpy() for v in averaged_variables(third)], strict=True):
        np.testing.assert_array_equal(a, b)
    bare = tf.train.Checkpoint(model=tiny_model(3)).save(str(tmp_path / "bare"))
    with pytest.raises(ValueError, match="no EMA"):
        restore_averages_into(averaged_variables(third), bare)


def test_exported_saved_model_serves_the_ema_weights_not_the_raw_ones(tmp_path):
    model = tiny_model()
    ema = WeightEMA(averaged_variables(model), decay=0.9)
    rng = np.random.default_rng(2)
    for v in averaged_variables(model):  # raw weights move away from the shadows
        v.assign(v + rng.normal(scale=0.5, size=v.shape).astype(np.float32) ** 2)
    ema.update(1)
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    raw_out = model(images.astype(np.float32), training=False).numpy()
    with ema.swapped():
        ema_out = model(images.astype(np.float32), training=False).numpy()
        export_dir = export_saved_model(model, str(tmp_path), "m")
    np.testing.assert_array_equal(model(images.astype(np.float32), training=False).numpy(), raw_out)
    served = tf.saved_model.load(export_dir).signatures["serving_default"](images=tf.constant(images))
    served = served["embeddings"].numpy()
    np.testing.assert_allclose(served, ema_out, atol=1e-5)
    assert np.max(np.abs(served - raw_out)) > 1e-2


MIRRORED = """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tfface.train.ema import WeightEMA

    def run(strategy, replica_context):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            dense = keras.layers.Dense(3)
            dense.build((None, 4))
            opt = keras.optimizers.SGD(0.1, momentum=0.9)
            opt.build(dense.trainable_variables)
            ema = WeightEMA(dense.trainable_variables, decay=0.6)
            start = [v.numpy() for v in dense.trainable_variables]
        x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        ds = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x).repeat().unbatch()
                                                           .batch(8)))

        def step_fn(batch):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(dense(batch) ** 2) / 8.0
            grads = tape.gradient(loss, dense.trainable_variables)
            opt.apply_gradients(zip(grads, dense.trainable_variables))
            if replica_context:
                ema.update(opt.iterations)

        @tf.function
        def step(it):
            strategy.run(step_fn, args=(next(it),))
            if not replica_context:
                ema.update(opt.iterations)

        history = [start]
        for _ in range(12):
            step(ds)
            history.append([v.numpy() for v in dense.trainable_variables])
        locals_ = [[c.numpy() for c in strategy.experimental_local_results(s)] for s in ema.shadows]
        raw = dense.kernel.numpy()
        with ema.swapped():  # between steps, in the cross-replica context, on every replica's copy
            for c in strategy.experimental_local_results(dense.kernel.value):
                np.testing.assert_array_equal(c.numpy(), locals_[0][0])
        for c in strategy.experimental_local_results(dense.kernel.value):
            np.testing.assert_array_equal(c.numpy(), raw)
        return history, locals_

    def reference(history, i, decay):
        shadow = history[0][i].copy()
        for t, h in enumerate(history[1:], start=1):
            d = min(decay, (1 + t) / (10 + t))
            shadow = d * shadow + (1 - d) * h[i]
        return shadow

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one per process: see test_strategy.py
    assert strategy.num_replicas_in_sync == 2
    for replica_context in (True, False):
        history, locals_ = run(strategy, replica_context)
        for i, copies in enumerate(locals_):
            assert len(copies) == 2
            for c in copies:  # every replica's copy of the shadow
                np.testing.assert_allclose(c, reference(history, i, 0.6), rtol=1e-5, atol=1e-6)
    print("mirrored ema ok")
"""


def test_update_under_mirrored_strategy_in_replica_and_cross_replica_context(run_cpu_script):
    assert "mirrored ema ok" in run_cpu_script(MIRRORED)
