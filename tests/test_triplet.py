"""Triplet losses: golden values against NumPy brute force over all triplets, ties, degenerate batches,
gradients, float16, tf.function / XLA / MirroredStrategy, Keras wrappers."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.losses import (
    TripletBatchHardLoss,
    TripletSemiHardLoss,
    triplet_batch_hard_loss,
    triplet_semihard_loss,
)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sq_dist(x):
    """Squared L2 distances by explicit differences (the loss uses the Gram matrix)."""
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def semihard_reference(labels, embeddings, margin=0.2):
    """Brute force: every (anchor, positive), scanning every negative; float64."""
    labels = np.asarray(labels).reshape(-1)
    d = _sq_dist(_unit(embeddings))
    losses = []
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            semi = [d[a, n] for n in negatives if d[a, p] < d[a, n] < d[a, p] + margin]
            d_an = min(semi) if semi else min(d[a, n] for n in negatives)
            losses.append(max(d[a, p] - d_an + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def batch_hard_reference(labels, embeddings, margin=0.2, soft=False, squared=True):
    labels = np.asarray(labels).reshape(-1)
    d = _sq_dist(_unit(embeddings))
    if not squared:
        d = np.sqrt(d)
    losses = []
    for a in range(len(labels)):
        pos = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            gap = max(pos) - min(neg)
            losses.append(np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def random_case(seed, batch=12, dim=5, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=batch)
    scale = rng.uniform(0.3, 5.0, size=(batch, 1))  # unnormalised on purpose
    return labels, (rng.normal(size=(batch, dim)) * scale).astype(np.float32)


def axis_case(seed, batch=10):
    """Unit axis vectors +-e_i: every squared distance is exactly 0, 2 or 4, so ties abound (duplicates
    across and within identities included) and both implementations see the same exact values."""
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, 3), np.float32)
    x[np.arange(batch), rng.integers(0, 3, size=batch)] = rng.choice([-1.0, 1.0], size=batch)
    return rng.integers(0, 3, size=batch), x


CASES = [random_case(s) for s in range(4)] + [
    random_case(10, batch=9, classes=8),  # mostly singletons: few positives
    random_case(11, batch=16, dim=3, classes=2),  # many positives, low dim: many semi-hard candidates
    axis_case(0),
    axis_case(1),
    ([0, 0, 0, 1, 2, 2, 3], random_case(12, batch=7)[1]),  # classes of one image (1 and 3)
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_semihard_matches_brute_force(case, margin):
    labels, x = CASES[case]
    expected = semihard_reference(labels, x, margin)
    got = triplet_semihard_loss(np.asarray(labels), x, margin=margin)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("soft,squared", [(False, True), (True, True), (False, False), (True, False)])
def test_batch_hard_matches_brute_force(case, soft, squared):
    labels, x = CASES[case]
    expected = batch_hard_reference(labels, x, 0.2, soft, squared)
    got = triplet_batch_hard_loss(np.asarray(labels), x, margin=0.2, soft=soft, squared=squared)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_semihard_selection_by_hand():
    """Anchor e0 with positive e1 (d_ap = 2) against negatives chosen to hit each rule."""
    e = np.eye(3, dtype=np.float32)
    labels = np.array([0, 0, 1])
    # A negative at exactly d_ap (e2: d = 2) is a tie, not semi-hard; the only other negative is easy
    # (-e0 at d = 4 >= 2 + 0.2) so the fallback (hardest negative: d = 2) gives 2 - 2 + 0.2.
    x = np.stack([e[0], e[1], e[2]])
    np.testing.assert_allclose(triplet_semihard_loss(labels, x).numpy(), 0.2, rtol=1e-6)
    # Margin 2.5. Anchor e0: -e0 is semi-hard (2 < 4 < 4.5) -> 2 - 4 + 2.5 = 0.5. Anchor e1: -e0 at d = 2
    # is a tie with the positive -> fallback to it anyway: 2 - 2 + 2.5 = 2.5.
    x = np.stack([e[0], e[1], -e[0]])
    np.testing.assert_allclose(triplet_semihard_loss(labels, x, margin=2.5).numpy(), (0.5 + 2.5) / 2, rtol=1e-6)
    # A hard negative (closer than the positive) is used only when nothing is semi-hard.
    x = np.stack([e[0], e[1], e[0], -e[0]])
    labels = np.array([0, 0, 1, 1])
    # (a=0, p=1): negatives e0 (d=0, hard) and -e0 (d=4, semi-hard) -> the semi-hard one: 2 - 4 + 2.5 = 0.5
    # (a=1, p=0): negatives at d=2 and d=2, both ties -> fallback hardest: 2 - 2 + 2.5 = 2.5
    # (a=2, p=3): d_ap=4, negatives e0 (0), e1 (2), none in (4, 6.5) -> hardest: 4 - 0 + 2.5 = 6.5
    # (a=3, p=2): d_ap=4, negatives e0 (4, tie), e1 (2) -> hardest: 4 - 2 + 2.5 = 4.5
    expected = (0.5 + 2.5 + 6.5 + 4.5) / 4
    assert semihard_reference(labels, x, 2.5) == expected
    np.testing.assert_allclose(triplet_semihard_loss(labels, x, margin=2.5).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("loss_fn", [triplet_semihard_loss, triplet_batch_hard_loss])
def test_no_valid_triplet_gives_zero_not_nan(loss_fn):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    for labels in ([3, 3, 3, 3, 3], [0, 1, 2, 3, 4]):  # no negatives / no positives
        value = loss_fn(np.array(labels), x)
        assert value.numpy() == 0.0
        with tf.GradientTape() as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            value = loss_fn(np.array(labels), xt)
        np.testing.assert_array_equal(tape.gradient(value, xt).numpy(), 0.0)
    assert loss_fn(np.array([1]), x[:1]).numpy() == 0.0
    assert loss_fn(np.zeros(0, np.int32), np.zeros((0, 4), np.float32)).numpy() == 0.0


def _numeric_gradient(fn, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("which", ["semihard", "batch_hard", "batch_hard_soft_euclid"])
def test_gradient_matches_reference_finite_differences(which):
    labels, x = random_case(3, batch=8, dim=3, classes=3)
    fns = {
        "semihard": (triplet_semihard_loss, semihard_reference, {}),
        "batch_hard": (triplet_batch_hard_loss, batch_hard_reference, {}),
        "batch_hard_soft_euclid": (triplet_batch_hard_loss, batch_hard_reference, {"soft": True, "squared": False}),
    }
    loss_fn, reference, kwargs = fns[which]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = loss_fn(labels, xt, **kwargs)
    numeric = _numeric_gradient(lambda v: reference(labels, v, **kwargs), x.astype(np.float64))
    np.testing.assert_allclose(tape.gradient(value, xt).numpy(), numeric, atol=2e-4)


@pytest.mark.parametrize("loss_fn,kwargs", [
    (triplet_semihard_loss, {}), (triplet_batch_hard_loss, {}), (triplet_batch_hard_loss, {"squared": False})])
def test_gradient_finite_for_coincident_embeddings(loss_fn, kwargs):
    v = np.array([[1.0, 2.0, 0.5]], np.float32)
    x = tf.constant(np.concatenate([v, v, v, -v, v * 3.0]))  # duplicates within and across identities
    labels = np.array([0, 0, 1, 1, 2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss_fn(labels, x, **kwargs)
    assert np.isfinite(value.numpy()) and value.numpy() > 0
    assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


@pytest.mark.parametrize("loss_fn", [triplet_semihard_loss, triplet_batch_hard_loss])
def test_float16_embeddings_give_float32_loss(loss_fn, mixed_precision):
    labels, x = random_case(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8)])  # float16 outputs under the policy
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        embeddings = model(inputs)
        value = loss_fn(labels, embeddings)
    assert embeddings.dtype == tf.float16 and value.dtype == tf.float32 and np.isfinite(value.numpy())
    grads = tape.gradient(value, model.trainable_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    reference = loss_fn(labels, tf.cast(embeddings, tf.float32))
    np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=1e-6)


def test_graph_modes_dynamic_batch_and_xla():
    labels, x = CASES[5]
    spec = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.float32))
    graph = tf.function(lambda y, e: triplet_semihard_loss(y, e), input_signature=spec)
    xla = tf.function(lambda y, e: triplet_semihard_loss(y, e), jit_compile=True)
    expected = semihard_reference(labels, x)
    np.testing.assert_allclose(graph(labels, x).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(xla(labels, x).numpy(), expected, rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="different batch sizes"):
        graph(labels[:-1], x)


def test_label_and_argument_checks():
    labels, x = random_case(0)
    for fn in (triplet_semihard_loss, triplet_batch_hard_loss):
        with pytest.raises(TypeError, match="integer"):
            fn(labels.astype(np.float32), x)
        with pytest.raises(ValueError, match="batch sizes"):
            fn(labels[:-1], x)
        with pytest.raises(ValueError, match=r"\(B,\) or \(B, 1\)"):
            fn(labels.reshape(3, 4), x)
        with pytest.raises(ValueError, match="margin"):
            fn(labels, x, margin=-0.1)
        np.testing.assert_allclose(fn(labels[:, None], x).numpy(), fn(labels, x).numpy())  # (B, 1) labels


def test_keras_wrappers_config_and_fit():
    labels, x = random_case(1)
    semi, hard = TripletSemiHardLoss(margin=0.3), TripletBatchHardLoss(margin=0.1, soft=True, squared=False)
    np.testing.assert_allclose(semi(labels, x).numpy(), semihard_reference(labels, x, 0.3), rtol=1e-5)
    np.testing.assert_allclose(hard(labels, x).numpy(), batch_hard_reference(labels, x, 0.1, True, False), rtol=1e-5)
    for loss in (semi, hard):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
        with pytest.raises(ValueError, match="sample_weight"):
            loss(labels, x, sample_weight=np.ones(len(labels)))
    # model.fit passes integer y_true straight through to the loss.
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=TripletSemiHardLoss())
    history = model.fit(x, labels.astype(np.int32), batch_size=12, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


MIRRORED = """
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tfface.losses import contrastive_loss, triplet_batch_hard_loss, triplet_semihard_loss
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 6)).astype(np.float32)
y = np.repeat(np.arange(8), 2).astype(np.int32)  # P x K = 8 x 2, identity-major
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)))
fns = (triplet_semihard_loss, triplet_batch_hard_loss, contrastive_loss)
@tf.function
def step(batch):
    def replica(e, lab):
        return [f(lab, e) / strategy.num_replicas_in_sync for f in fns]
    per = strategy.run(replica, args=batch)
    return [strategy.reduce("SUM", v, axis=None) for v in per], [strategy.experimental_local_results(v) for v in per]
total, local = step(next(iter(ds)))
for f, t, loc in zip(fns, total, local):
    halves = [f(y[:8], x[:8]).numpy(), f(y[8:], x[8:]).numpy()]
    np.testing.assert_allclose([v.numpy() * 2 for v in loc], halves, rtol=1e-6)
    np.testing.assert_allclose(t.numpy(), np.mean(halves), rtol=1e-6)
print("OK")
"""


def test_mirrored_strategy_two_replicas(run_cpu_script):
    """Each replica mines its own half of the global batch; summing loss / replicas averages them."""
    assert "OK" in run_cpu_script(MIRRORED, timeout=120)
