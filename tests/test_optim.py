"""Optimisers and weight decay: roles of the variables, L2 vs decoupled against NumPy, mode resolution."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers.center import CenterLoss
from tfface.train.config import TrainConfig
from tfface.train.optim import add_l2, decay_mask, make_optimizer, no_decay_variables, resolve_decay_mode
from tfface.train.workdir import build_face_models


def test_decay_roles_on_mobilefacenet_with_normface_and_centres():
    from tfface.layers.heads import build_head

    cfg = TrainConfig(workdir="-", input_size=(32, 32), width_multiplier=0.25, embedding_size=8)
    feature_model, _ = build_face_models(cfg)
    head = build_head("normface", 5, learn_s=True)
    head.build((None, 8))
    center = CenterLoss(5)
    center.build((None, 8))
    variables = feature_model.trainable_variables + head.trainable_variables + center.weights
    mask = decay_mask(variables, feature_model, head, center)
    decayed = sorted({v.path.split("/")[-1] for v, d in zip(variables, mask, strict=True) if d})
    kept = sorted({v.path.split("/")[-1] for v, d in zip(variables, mask, strict=True) if not d})
    assert decayed == ["kernel"]  # conv, depthwise, dense and the head's class kernel
    assert kept == ["alpha", "beta", "centers", "gamma", "raw_scale"]
    # Every PReLU slope is found by role, although a convolutional one has rank 3 like no vector does.
    alphas = [v for v in variables if v.path.endswith("alpha")]
    assert alphas and any(len(v.shape) == 3 for v in alphas)
    assert {id(v) for v in alphas} <= {id(v) for v in no_decay_variables(feature_model)}
    assert sum(mask) == sum(1 for v in variables if v.path.endswith("kernel"))


def test_bias_is_excluded_by_identity_not_name():
    layer = keras.layers.Dense(3, name="dense_bias_test")
    layer.build((None, 4))
    odd = keras.Variable(np.ones((2, 2), np.float32), name="bias_like_but_a_matrix")  # owned by no layer
    assert decay_mask([layer.kernel, layer.bias, odd], layer) == [True, False, True]


def _run(name, mode, weight_decay, momentum, steps=5, lr=0.1):
    """Minimise 0.5·‖A w − b‖² for a decayed matrix and an excluded bias; returns the weights per step."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(2, bias_initializer="ones")
    layer.build((None, 3))
    variables = layer.trainable_variables
    opt, l2 = make_optimizer(name, lr, variables, layer, momentum=momentum, weight_decay=weight_decay, mode=mode)
    opt.build(variables)
    mask = decay_mask(variables, layer)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    history = [[v.numpy() for v in variables]]
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum((layer(x) - 1.0) ** 2)
        grads = add_l2(tape.gradient(loss, variables), variables, mask, l2)
        opt.apply_gradients(zip(grads, variables, strict=True))
        history.append([v.numpy() for v in variables])
    return x, history


def _numpy_sgd(x, w, b, lr, momentum, l2, decoupled, steps):
    mw, mb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        r = x @ w + b - 1.0
        gw, gb = x.T @ r, r.sum(0)
        if decoupled:
            w = w - lr * decoupled * w  # before the gradient step, the gradient taken at the old w
        gw = gw + l2 * w if l2 else gw
        mw, mb = momentum * mw - lr * gw, momentum * mb - lr * gb  # Keras SGD = PyTorch SGD at constant lr
        w, b = w + mw, b + mb
    return w, b


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_sgd_momentum_decay_matches_numpy(mode):
    x, history = _run("sgd", mode, 0.05, 0.9)
    w0, b0 = history[0]
    w, b = _numpy_sgd(x, w0, b0, 0.1, 0.9, 0.05 if mode == "l2" else 0.0, 0.05 if mode == "decoupled" else 0.0,
                      5)
    np.testing.assert_allclose(history[-1][0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(history[-1][1], b, rtol=1e-4, atol=1e-5)  # the bias is never decayed


def test_l2_and_decoupled_agree_without_momentum_and_differ_with_it():
    _, l2 = _run("sgd", "l2", 0.05, 0.0)
    _, dec = _run("sgd", "decoupled", 0.05, 0.0)
    np.testing.assert_allclose(l2[-1][0], dec[-1][0], rtol=1e-5, atol=1e-6)
    _, l2m = _run("sgd", "l2", 0.05, 0.9)
    _, decm = _run("sgd", "decoupled", 0.05, 0.9)
    assert np.max(np.abs(l2m[-1][0] - decm[-1][0])) > 1e-3


def test_keras_l2_regulariser_with_half_lambda_is_pytorch_weight_decay():
    w = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
    lam = 5e-4
    with tf.GradientTape() as tape:
        penalty = keras.regularizers.L2(lam / 2)(w)
    np.testing.assert_allclose(tape.gradient(penalty, w).numpy(), lam * w.numpy(), rtol=1e-6)


def test_adamw_decays_only_by_role():
    layer = keras.layers.Dense(2, bias_initializer="ones")
    layer.build((None, 3))
    variables = layer.trainable_variables
    opt, l2 = make_optimizer("adamw", 0.1, variables, layer, weight_decay=0.01)
    assert l2 == 0.0
    opt.build(variables)
    before = [v.numpy() for v in variables]
    opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # Adam's own step is 0 for a 0 gradient
    np.testing.assert_allclose(variables[0].numpy(), before[0] * (1 - 0.1 * 0.01), rtol=1e-6)
    np.testing.assert_array_equal(variables[1].numpy(), before[1])


def test_mode_resolution():
    assert resolve_decay_mode("sgd") == "l2"
    assert resolve_decay_mode("adam") == "l2"
    assert resolve_decay_mode("adamw") == "decoupled"
    assert resolve_decay_mode("sgd", "decoupled") == "decoupled"
    with pytest.raises(ValueError, match="adamw"):
        resolve_decay_mode("adamw", "l2")
    with pytest.raises(ValueError, match="mode"):
        resolve_decay_mode("sgd", "both")
    with pytest.raises(ValueError, match="optimizer"):
        resolve_decay_mode("lamb")
