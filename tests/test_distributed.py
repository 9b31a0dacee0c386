"""Steps on 1 replica and on 2 replicas (MirroredStrategy over 2 logical CPUs) give the same
losses and the same updated state: every weight, BatchNorm statistics included, and every
optimiser variable.

Both run in float64.  In float32 the two differ by float32 noise (the replicas sum every
reduction in another order), and that noise is chaotic over a step: a ReLU input or a
pooling tie that rounding pushes across zero changes an array's gradient by a whole unit's
contribution.  Measured on this machine: a 2-replica OKDDip run 290x the float32 noise of
the single-device step on one momentum buffer after two steps (2e-5 against 7e-8), with the
first step within noise, and the float64 runs of the same steps agreeing to 6e-15.  Float64
rounding is 2^29 times smaller, so an honest 2-replica run stays within
``REPLICA_AGREEMENT`` and a real defect (unsynchronised BatchNorm, a loss or gradient scaled
by the replica count) lies orders of magnitude above it: ``test_unsynchronised_batchnorm_...``
plants one.

The 1-replica reference is the plain single-device step a user runs without a strategy;
the 2-replica run synchronises BatchNorm so both see the statistics of the global batch.
One MirroredStrategy serves the whole session: a second one in the same process reuses
collective instance keys and TensorFlow aborts ("Restart your program to reset").
"""

import numpy as np
import pytest
import tensorflow as tf

from helpers import METHOD_CASES, disagreements, method_inputs, random_batch, temperature_of, tiny_config
from keras_ffl.build import build_model, compile_model, set_precision

#: Largest relative difference (``helpers.disagreements``) allowed between the float64 runs
#: on 1 and 2 replicas.  Measured: 4e-15 to 4e-14 over the cases below after two steps (ONE,
#: measured once: 2e-12), float64 rounding of the replicas' other summation order;
#: unsynchronised BatchNorm moves a momentum buffer by 0.6 of its size in one step.
REPLICA_AGREEMENT = 1e-9


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


def single_and_mirrored(mirrored, overrides, sync_bn=True, steps=2):
    """Runs the steps in float64 on one device and on two replicas from the same initial
    weights: ``initial, (history, model) on one device, (history, model) on two replicas``."""
    import keras

    x, y = random_batch(8, seed=11)
    keras.utils.set_random_seed(0)
    base = dict(lr=0.1, momentum=0.9, **overrides)
    set_precision("float64")
    try:
        initial, hist1, model1 = run_steps(tf.distribute.get_strategy(), tiny_config(**base), None, x, y, steps)
        config2 = tiny_config(sync_bn=sync_bn, strategy="mirrored", cpu_devices=2, **base)
        _, hist2, model2 = run_steps(mirrored, config2, initial, x, y, steps)
    finally:
        set_precision("float32")
    return initial, (hist1, model1), (hist2, model2)


def state_of(model):
    """Weights (BN statistics included) and every optimiser's state, by name."""
    state = {f"weight {i} {v.path}": np.asarray(v) for i, v in enumerate(model.weights)}
    state.update({f"optimizer variable {i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    return state


#: Every method's case (``helpers.METHOD_CASES``: BatchNorm over the global batch and the loss
#: mean over it, sequential phases, two optimisers, views, memory banks gathered across
#: replicas, a temporal mean moved once for all replicas, a teacher run), and the paths inside
#: a method that distribution changes beside them: mixed architectures and frozen pre-trained
#: copies.
REPLICA_CASES = {
    **{method: dict(case) for method, case in METHOD_CASES.items()},
    "ffl-resnet-wrn": dict(method="ffl", backbones=("resnet8", "wrn10_1"), fusion_channels=32),
    "ffcl-pretrained": dict(method="ffcl", backbones=("resnet8", "wrn10_1"), temperature=1.0),
}


@pytest.mark.parametrize("case", sorted(REPLICA_CASES))
def test_one_and_two_replicas_take_the_same_steps(mirrored, case, teacher_run):
    overrides = dict(REPLICA_CASES[case])
    if overrides["method"] == "kd":
        overrides["teacher_dir"] = teacher_run
    # Two steps with momentum: the optimisers' states must match too.
    initial, one, two = single_and_mirrored(mirrored, overrides)
    worst = replica_disagreements(one, two, overrides, f"{overrides}")
    assert worst[0][0] <= REPLICA_AGREEMENT, worst[:5]
    moved = sum(not np.allclose(a, start) for a, start in zip(one[1].get_weights(), initial))
    # The steps did update weights and BN statistics (not a frozen teacher's: offline KD's, FFCL's copies).
    assert moved > len(one[1].trainable_weights), (moved, len(one[1].trainable_weights))


def replica_disagreements(one, two, overrides, what):
    """``helpers.disagreements`` of the 2-replica run's logged losses and state against the
    1-replica run's (each a ``(history, model)``), printing the largest."""

    def losses_and_state(history, model):
        losses = {name: values[0] for name, values in history.items() if not name.startswith(("acc", "top5"))}
        return {**losses, **state_of(model)}

    worst = disagreements(losses_and_state(*two), losses_and_state(*one), temperature_of(overrides))
    print(f"{what}: largest relative difference {worst[0][0]:.2e} ({worst[0][1]})")
    return worst


def test_unsynchronised_batchnorm_differs_across_replicas(mirrored):
    """Why --sync_bn exists, and a planted defect the comparison above must catch: per-replica
    statistics give a different step."""
    _, one, two = single_and_mirrored(mirrored, {}, sync_bn=False, steps=1)
    worst = replica_disagreements(one, two, {}, "unsynchronised BatchNorm")
    assert worst[0][0] > 1000 * REPLICA_AGREEMENT, worst[:3]
