"""SphereFace (A-Softmax): psi across k, the lambda schedule, the step counter (eager, tf.function, checkpoint,
two-replica MirroredStrategy), golden logits against NumPy, finite gradients at cos = +-1."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfface.layers import SphereFace
from tfface.layers.sphereface import chebyshev


def psi_reference(theta, m):
    """The paper's psi with numpy's cos(m theta) (independent of the layer's Chebyshev route)."""
    k = np.minimum(np.floor(theta * m / math.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2.0 * k


def lambda_reference(it, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    return max(lambda_min, base * (1.0 + gamma * it) ** (-power))


def sphereface_reference(x, w, labels, m, lam):
    norm = np.linalg.norm(x, axis=1)
    cos = np.clip((x / norm[:, None]) @ (w / np.linalg.norm(w, axis=0)), -1.0, 1.0)
    out = norm[:, None] * cos
    for i, y in enumerate(labels):
        theta = np.arccos(cos[i, y])
        out[i, y] = norm[i] * (lam * cos[i, y] + psi_reference(theta, m)) / (1.0 + lam)
    return out


def make_case(rng, m, batch=40, dim=12, classes=6):
    """Embeddings at angles covering every k interval of psi (away from the interval ends), random norms."""
    w = rng.normal(size=(dim, classes))
    labels = rng.integers(0, classes, size=batch)
    k = np.arange(batch) % m
    theta = (k + rng.uniform(0.05, 0.95, size=batch)) * math.pi / m
    x = []
    for y, t in zip(labels, theta, strict=True):
        c = w[:, y] / np.linalg.norm(w[:, y])
        u = rng.normal(size=dim)
        u -= (u @ c) * c
        x.append((math.cos(t) * c + math.sin(t) * u / np.linalg.norm(u)) * rng.uniform(0.5, 20.0))
    return np.stack(x), w, labels


def make_head(w, **kwargs):
    head = SphereFace(w.shape[1], **kwargs)
    head.build((None, w.shape[0]))
    head.kernel.assign(w.astype("float32"))
    return head


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_matches_reference_across_every_k(m):
    theta = np.concatenate([np.linspace(0.0, math.pi, 721), np.arange(m + 1) * math.pi / m])
    head = SphereFace(3, m=m)
    got = head.psi(tf.constant(np.cos(theta), tf.float32)).numpy()
    np.testing.assert_allclose(got, psi_reference(theta, m), atol=2e-4)
    grid = np.linspace(0.0, math.pi, 2001)
    values = head.psi(tf.constant(np.cos(grid), tf.float32)).numpy()
    assert np.all(np.diff(values) <= 1e-4), "psi decreases monotonically on [0, pi]"
    assert values[-1] == pytest.approx(1.0 - 2.0 * m, abs=1e-4)  # psi(pi) = 1 - 2m


def test_chebyshev_is_cos_m_theta():
    theta = np.linspace(0.0, math.pi, 101)
    for m in range(6):
        got = chebyshev(tf.constant(np.cos(theta)), m).numpy()
        np.testing.assert_allclose(got, np.cos(m * theta), atol=1e-10)


def test_lambda_schedule():
    head = SphereFace(3)
    for it in (0, 1, 2, 10, 100, 1000, 1657, 1700, 10**6):
        assert float(head.lambda_at(it)) == pytest.approx(lambda_reference(it), rel=1e-6)
    assert float(head.lambda_at(10**6)) == 5.0
    other = SphereFace(3, base=100.0, gamma=0.5, power=2.0, lambda_min=0.0)
    for it in (0, 3, 50, 10**5):
        assert float(other.lambda_at(it)) == pytest.approx(lambda_reference(it, 100.0, 0.5, 2.0, 0.0), rel=1e-6)


@pytest.mark.parametrize("m", [4, 2])
def test_golden_logits_and_counter(m):
    rng = np.random.default_rng(m)
    x, w, labels = make_case(rng, m)
    head = make_head(w, m=m)
    assert head.iterations.dtype == "int64" and not head.iterations.trainable
    assert head.iterations.path.endswith("iterations")
    xf = x.astype("float32")
    # Evaluation uses the current counter and leaves it alone.
    got = head(xf, labels, training=False).numpy()
    np.testing.assert_allclose(got, sphereface_reference(x, w, labels, m, 1000.0), rtol=1e-4, atol=1e-4)
    assert int(head.iterations.numpy()) == 0
    # Each training call increments first, then uses the new value (Caffe's order).
    for step in (1, 2, 3):
        got = head(xf, labels, training=True).numpy()
        assert int(head.iterations.numpy()) == step
        np.testing.assert_allclose(
            got, sphereface_reference(x, w, labels, m, lambda_reference(step)), rtol=1e-4, atol=1e-4
        )
    head.iterations.assign(5000)  # lambda has reached lambda_min = 5
    got = head(xf, labels).numpy()
    np.testing.assert_allclose(got, sphereface_reference(x, w, labels, m, 5.0), rtol=1e-4, atol=1e-4)
    # Without labels: |x| cos(theta_j) for every class, counter untouched even in training.
    plain = head(xf, training=True).numpy()
    np.testing.assert_allclose(plain, sphereface_reference(x, w, labels[:0], m, 5.0), rtol=1e-5, atol=1e-4)
    assert int(head.iterations.numpy()) == 5000


def test_counter_in_tf_function_with_tensor_training_flag():
    rng = np.random.default_rng(0)
    x, w, labels = make_case(rng, 4, batch=8)
    head = make_head(w)
    fn = tf.function(lambda x, y, t: head(x, y, training=t))
    for t in (True, True, False, True):
        fn(tf.constant(x, tf.float32), tf.constant(labels), tf.constant(t))
    assert int(head.iterations.numpy()) == 3
    py = tf.function(lambda x, y: head(x, y, training=True))
    py(tf.constant(x, tf.float32), tf.constant(labels))
    assert int(head.iterations.numpy()) == 4


def test_counter_is_checkpointed(tmp_path):
    head = SphereFace(4)
    head.build((None, 3))
    head.iterations.assign(1234)
    path = tf.train.Checkpoint(head=head).write(str(tmp_path / "ckpt"))
    fresh = SphereFace(4)
    fresh.build((None, 3))
    tf.train.Checkpoint(head=fresh).read(path).assert_consumed()
    assert int(fresh.iterations.numpy()) == 1234
    np.testing.assert_array_equal(fresh.kernel.numpy(), head.kernel.numpy())


def test_gradient_finite_at_cos_plus_minus_one(assert_finite_at_cos_extremes):
    w = np.random.default_rng(3).normal(size=(8, 4))
    head = make_head(w)
    for it in (0, 10**5):  # lambda = 1000 and lambda = 5
        head.iterations.assign(it)
        # plus a zero feature (|x| = 0, the angle undefined) of another class
        assert_finite_at_cos_extremes(head, w, extra_rows=[np.zeros(8, "float32")], extra_labels=[1])


def test_config_and_invalid_arguments():
    head = SphereFace(7, m=3, base=500.0, gamma=0.1, power=2.0, lambda_min=1.0, name="sphere")
    clone = SphereFace.from_config(head.get_config())
    assert (clone.num_classes, clone.m, clone.base, clone.gamma, clone.power, clone.lambda_min) == (
        7, 3, 500.0, 0.1, 2.0, 1.0
    )
    assert SphereFace(3, m=4.0).m == 4
    for bad in ({"m": 1.5}, {"m": 0}, {"lambda_min": -1.0}):
        with pytest.raises(ValueError):
            SphereFace(3, **bad)


DISTRIBUTED = """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from tfface.layers import SphereFace

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        head = SphereFace(5)
        head.build((None, 6))
        opt = keras.optimizers.SGD(0.01)
        opt.build(head.trainable_variables)

    @tf.function
    def step(x, y):
        def replica_fn(x, y):
            with tf.GradientTape() as tape:
                logits = head(x, y, training=True)
                per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
            grads = tape.gradient(loss, head.trainable_variables)
            opt.apply_gradients(zip(grads, head.trainable_variables))
            return loss
        return strategy.reduce("SUM", strategy.run(replica_fn, args=(x, y)), axis=None)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 5, size=8).astype("int32")
    batches = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat()))
    losses = [float(step(*next(batches))) for _ in range(3)]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "losses": losses,
                      "per_replica": [int(v.numpy()) for v in head.iterations.value.values]}))
"""


def test_counter_steps_once_per_global_step_on_two_replicas(run_cpu_script):
    out = json.loads(run_cpu_script(DISTRIBUTED, timeout=300).strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["per_replica"] == [3, 3]
    assert all(np.isfinite(out["losses"]))
