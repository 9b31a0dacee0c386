"""One train step on 1 replica and on 2 replicas (MirroredStrategy over 2 logical CPUs)
gives the same loss and the same updated weights, BatchNorm statistics included.

The 1-replica reference is the plain single-device step a user runs without a strategy;
the 2-replica run synchronises BatchNorm so both see the statistics of the global batch.
One MirroredStrategy serves the whole session: a second one in the same process reuses
collective instance keys and TensorFlow aborts ("Restart your program to reset").
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import random_batch, tiny_config
from keras_ffl.build import build_model, compile_model


@pytest.fixture(scope="session")
def mirrored():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


def run_steps(strategy, config, weights, x, y, steps):
    with strategy.scope():
        model = build_model(config, 10, x.shape[1:])
        compile_model(model, config, 10)
        if weights is not None:
            model.set_weights(weights)
    initial = [w.copy() for w in model.get_weights()]
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(steps), epochs=1, verbose=0, shuffle=False)
    return initial, history.history, model


def single_and_mirrored(mirrored, overrides, sync_bn=True, steps=2):
    x, y = random_batch(8, seed=11)
    keras.utils.set_random_seed(0)
    base = dict(lr=0.1, momentum=0.9, **overrides)
    initial, hist1, model1 = run_steps(tf.distribute.get_strategy(), tiny_config(**base), None, x, y, steps)
    config2 = tiny_config(sync_bn=sync_bn, strategy="mirrored", cpu_devices=2, **base)
    _, hist2, model2 = run_steps(mirrored, config2, initial, x, y, steps)
    return initial, (hist1, model1), (hist2, model2)


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(backbones=("resnet8", "wrn10_1"), fusion_channels=32),
     dict(method="dml", backbones=("resnet8", "wrn10_1"), temperature=3.0),
     dict(method="dml", dml_update="sequential"),
     dict(method="one", num_branches=3, rampup_epochs=80),
     dict(method="vanilla"),
     # Adam moves an element by about +-lr whatever the gradient's size, so float noise in a
     # near-zero gradient can flip a step: a small feature lr keeps such flips under the
     # weight tolerance, and Adam's moments (compared below) check the gradients themselves.
     dict(method="afd", backbones=("resnet8", "wrn10_2"), feature_lr=1e-6),
     dict(method="ffcl", backbones=("resnet8", "wrn10_1"), temperature=1.0)],
    ids=["ffl-shared-2", "ffl-resnet-wrn", "dml-mixed", "dml-sequential", "one-3", "vanilla", "afd-mixed",
         "ffcl-mixed"],
)
def test_one_and_two_replicas_take_the_same_steps(mirrored, overrides):
    # Two steps with momentum: the optimiser state must match too.
    initial, (hist1, model1), (hist2, model2) = single_and_mirrored(mirrored, overrides)
    for name in ("loss", "ce_net0", "kd_net0" if "kd_net0" in hist1 else "ce_net1"):
        assert hist1[name][0] == pytest.approx(hist2[name][0], rel=1e-5, abs=1e-6)
    w1, w2 = model1.get_weights(), model2.get_weights()
    if getattr(model1, "feature_optimizer", None) is not None:  # AFD's second optimiser stepped alike
        w1 += [np.asarray(v) for v in model1.feature_optimizer.variables]
        w2 += [np.asarray(v) for v in model2.feature_optimizer.variables]
    assert len(w1) == len(w2)
    moved = 0
    for a, b, start in zip(w1, w2, initial + [None] * (len(w1) - len(initial))):
        if start is None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # Adam moments
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        moved += not np.allclose(a, start)
    assert moved > len(initial) // 2  # the steps did update weights and BN statistics


def test_unsynchronised_batchnorm_differs_across_replicas(mirrored):
    """Why --sync_bn exists: per-replica statistics give a different step."""
    _, (hist1, model1), (hist2, model2) = single_and_mirrored(mirrored, {}, sync_bn=False, steps=1)
    assert hist1["loss"][0] != pytest.approx(hist2["loss"][0], rel=1e-5)
