"""The training step under MirroredStrategy (2 logical CPU devices) equals one device's.

Exact equality is checked on a BatchNorm-free model (a Dense layer feeding ArcFace): that proves the
loop's loss scaling and cross-replica gradient sum. With BatchNorm each replica normalises its half batch
with its own statistics (not synchronised across replicas, as in arcface_torch's DDP training; README says
so), so a MobileFaceNet is only checked to train with finite losses here.
"""

COMMON = """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tfface.layers import ArcFace
    from tfface.train.config import TrainConfig
    from tfface.train.strategy import make_strategy
    from tfface.train.step import make_train_step
    from tfface.train.workdir import build_models

    rng = np.random.default_rng(0)

    def dense_model():
        inputs = keras.Input((6,))
        return keras.Model(inputs, keras.layers.Dense(4)(inputs)), ArcFace(3, s=8.0, m=0.3)

    def train(name, build, x, y, batch, steps):
        keras.utils.set_random_seed(0)
        strategy = make_strategy(name)
        with strategy.scope():
            model, head = build()
            if not head.built:
                head.build((None, model.output_shape[-1]))
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        step = make_train_step(strategy, model, optimizer, batch, l2_decay=5e-4, head=head)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        it = iter(strategy.experimental_distribute_dataset(ds))
        losses = [float(step(it)[0]) for _ in range(steps)]
        return strategy.num_replicas_in_sync, losses, [v.numpy() for v in model.weights + head.weights]
"""

# Two MirroredStrategy instances in one process collide on collective-op instance keys, so each
# comparison runs in its own process.
EXACT = COMMON + """
    x = rng.normal(size=(24, 6)).astype("float32")
    y = rng.integers(0, 3, 24).astype("int32")
    n1, loss1, w1 = train("one_device", dense_model, x, y, 8, 3)
    n2, loss2, w2 = train("mirrored", dense_model, x, y, 8, 3)
    assert (n1, n2) == (1, 2), (n1, n2)
    np.testing.assert_allclose(loss1, loss2, rtol=1e-4)
    # Relative to each variable's scale: the ArcFace kernel grows to O(10) and float sums differ in order.
    worst = max(float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(a)))) for a, b in zip(w1, w2))
    assert worst < 1e-4, worst
    print("max relative weight difference", worst)
"""

MOBILEFACENET = COMMON + """
    cfg = TrainConfig(workdir="-", input_size=(32, 32), width_multiplier=0.25, embedding_size=8, batch_size=8)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, 16).astype("int32")
    _, losses, _ = train("mirrored", lambda: build_models(cfg, 5)[::2][:2], images, labels, 8, 2)
    assert np.all(np.isfinite(losses)), losses
    print("losses", losses)
"""


def test_mirrored_on_two_replicas_matches_one_device(run_cpu_script):
    assert "max relative weight difference" in run_cpu_script(EXACT)


def test_mobilefacenet_trains_under_mirrored(run_cpu_script):
    assert "losses" in run_cpu_script(MOBILEFACENET)
