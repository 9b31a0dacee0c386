"""The shared loss functions against numpy, and the ramp-up."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from keras_ffl.losses import cross_entropy, distillation_kl, rampup_weight

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "golden_losses.json")))


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    z, y = rng.normal(0, 4, (7, 13)), rng.integers(0, 13, 7)
    assert float(tf.reduce_mean(cross_entropy(z, y))) == pytest.approx(ref.cross_entropy(z, y), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.5])
def test_distillation_kl_matches_numpy(temperature):
    rng = np.random.default_rng(2)
    s, t = rng.normal(0, 5, (9, 100)), rng.normal(0, 5, (9, 100))
    got = float(tf.reduce_mean(distillation_kl(s, t, temperature)))
    assert got == pytest.approx(ref.distillation_kl(s, t, temperature), rel=1e-5)


def test_distillation_kl_without_t2():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    with_t2 = float(tf.reduce_mean(distillation_kl(s, t, 3.0)))
    without = float(tf.reduce_mean(distillation_kl(s, t, 3.0, scale_by_t2=False)))
    assert with_t2 == pytest.approx(9.0 * without, rel=1e-6)


def test_teacher_side_is_detached():
    s = tf.Variable(tf.random.normal((4, 10)))
    t = tf.Variable(tf.random.normal((4, 10)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(distillation_kl(s, t, 3.0))
    grad_s, grad_t = tape.gradient(loss, [s, t])
    assert grad_t is None
    assert float(tf.reduce_max(tf.abs(grad_s))) > 0


def test_kl_of_identical_logits_is_only_the_epsilon():
    z = np.random.default_rng(4).normal(size=(3, 10))
    assert abs(float(tf.reduce_mean(distillation_kl(z, z, 3.0)))) < 1e-4


@pytest.mark.parametrize(
    "epoch,length,expected",
    [(0, 80, np.exp(-5)), (40, 80, np.exp(-1.25)), (80, 80, 1.0), (200, 80, 1.0), (-3, 80, np.exp(-5)),
     (10, 20, np.exp(-1.25)), (7, 0, 1.0)],
)
def test_rampup_values(epoch, length, expected):
    assert rampup_weight(epoch, length) == pytest.approx(expected, rel=1e-9)
    assert float(rampup_weight(tf.constant(float(epoch)), length)) == pytest.approx(expected, rel=1e-6)


def test_rampup_is_monotonic():
    values = [rampup_weight(e, 80) for e in range(0, 100)]
    assert all(a <= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("case", range(len(GOLDEN["ffl"])))
def test_golden_fixture_agrees_with_numpy_reference(case):
    """Guards the fixture itself: regenerated numbers must still match the reference."""
    c = GOLDEN["ffl"][case]
    logits = [np.array(z) for z in c["logits"]]
    terms = ref.ffl_terms(logits, np.array(c["fused"]), np.array(c["labels"]), c["temperature"])
    assert terms == pytest.approx(c["terms"], rel=1e-9)
