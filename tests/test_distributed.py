"""One train step on 1 replica and on 2 replicas (MirroredStrategy over 2 logical CPUs)
gives the same loss and the same updated weights, BatchNorm statistics included, within the
float32 noise of that step: the same steps run in float64 on one device measure how far
float32 rounding alone moves each array (``helpers.float32_tolerance``).

The 1-replica reference is the plain single-device step a user runs without a strategy;
the 2-replica run synchronises BatchNorm so both see the statistics of the global batch.
One MirroredStrategy serves the whole session: a second one in the same process reuses
collective instance keys and TensorFlow aborts ("Restart your program to reset").
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_within_float32_noise, kl_scales, method_inputs, random_batch, reverse_batch, tiny_config
from keras_ffl.build import build_model, compile_model


@pytest.fixture(scope="session")
def mirrored():
    from keras_ffl.distribute import make_strategy

    strategy = make_strategy("mirrored", 2)  # the one the command line's runs in this process use too
    assert strategy.num_replicas_in_sync == 2
    return strategy


def run_steps(strategy, config, weights, x, y, steps):
    x = method_inputs(config, x) if not isinstance(x, dict) else x
    with strategy.scope():
        model = build_model(config, 10, (32, 32, 3))
        compile_model(model, config, 10)
        if weights is not None:
            model.set_weights(weights)
    initial = [w.copy() for w in model.get_weights()]
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(steps), epochs=1, verbose=0, shuffle=False)
    return initial, history.history, model


def single_and_mirrored(mirrored, overrides, sync_bn=True, steps=2, noise=False):
    """Runs the steps on one device and on two replicas from the same initial weights.  With
    ``noise``, also on one device with the batch in reverse order (another float32 rounding)
    and in float64 (the exact reference): what float32 noise alone does to the step."""
    x, y = random_batch(8, seed=11)
    keras.utils.set_random_seed(0)
    base = dict(lr=0.1, momentum=0.9, **overrides)
    initial, hist1, model1 = run_steps(tf.distribute.get_strategy(), tiny_config(**base), None, x, y, steps)
    config2 = tiny_config(sync_bn=sync_bn, strategy="mirrored", cpu_devices=2, **base)
    _, hist2, model2 = run_steps(mirrored, config2, initial, x, y, steps)
    runs = [(hist1, model1), (hist2, model2)]
    if noise:
        reversed_inputs = reverse_batch(method_inputs(tiny_config(**base), x))
        _, hist_r, model_r = run_steps(tf.distribute.get_strategy(), tiny_config(**base), initial, reversed_inputs,
                                       y[::-1].copy(), steps)
        runs.append((hist_r, model_r))
        keras.mixed_precision.set_global_policy("float64")
        _, hist64, model64 = run_steps(tf.distribute.get_strategy(), tiny_config(**base), initial, x, y, steps)
        keras.mixed_precision.set_global_policy("float32")
        runs.append((hist64, model64))
    return initial, *runs


def state_of(model):
    """Weights (BN statistics included) and every optimiser's state, by name."""
    state = {f"weight {i} {v.path}": np.asarray(v) for i, v in enumerate(model.weights)}
    state.update({f"optimizer variable {i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    return state


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
     dict(method="ffcl", backbones=("resnet8", "wrn10_1"), temperature=1.0),
     dict(method="cl_ilr", num_branches=4, temperature=2.0),
     dict(method="okddip", num_branches=4, rampup_epochs=80),
     dict(method="kdcl", backbones=("resnet8", "wrn10_1"), temperature=2.0),
     dict(method="mcl_okd", num_branches=3, nce_k=6),
     dict(method="pcl", num_branches=3, rampup_epochs=80)],
    ids=["ffl-shared-2", "ffl-resnet-wrn", "dml-mixed", "dml-sequential", "one-3", "vanilla", "afd-mixed",
         "ffcl-mixed", "cl_ilr-tree", "okddip", "kdcl-mixed", "mcl_okd", "pcl"],
)
def test_one_and_two_replicas_take_the_same_steps(mirrored, overrides):
    # Two steps with momentum: the optimisers' states must match too.
    initial, one, two, reversed_batch, exact = single_and_mirrored(mirrored, overrides, noise=True)

    def losses(history):
        return {name: values[0] for name, values in history.items() if not name.startswith(("acc", "top5"))}

    logged = [losses(history) for history, _ in (one, two, reversed_batch, exact)]
    assert_within_float32_noise(logged[1], logged[0], [logged[0], logged[2]], logged[3], what="logged",
                                scales=kl_scales(logged[0], overrides.get("temperature", 3.0), 10))
    states = [state_of(model) for _, model in (one, two, reversed_batch, exact)]
    assert_within_float32_noise(states[1], states[0], [states[0], states[2]], states[3], what="state")
    moved = sum(not np.allclose(a, start) for a, start in zip(one[1].get_weights(), initial))
    assert moved > len(initial) // 2  # the steps did update weights and BN statistics


def test_unsynchronised_batchnorm_differs_across_replicas(mirrored):
    """Why --sync_bn exists: per-replica statistics give a different step."""
    _, (hist1, model1), (hist2, model2) = single_and_mirrored(mirrored, {}, sync_bn=False, steps=1)
    assert hist1["loss"][0] != pytest.approx(hist2["loss"][0], rel=1e-5)
