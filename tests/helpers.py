"""Small builders shared by the tests."""

import dataclasses
import os
import subprocess
import sys

import h5py

import numpy as np

from keras_ffl.config import Config


#: Every registered method's case in the per-method harness (``test_every_method.py``) and the
#: replica test: Config overrides on ``tiny_config``, each taking the method's own path (its
#: topology, a second optimiser, views, a memory bank, a temporal mean, a teacher run).  A
#: method's teacher run (``--kd_teacher_dir``) comes from the ``teacher_run`` fixture.  ``test_registry`` holds
#: the keys to ``registry.NAMES``: a new method fails the suite until it has a case here.
METHOD_CASES = {
    "ffl": dict(method="ffl"),
    "dml": dict(method="dml", dml_update="sequential"),
    "one": dict(method="one", num_branches=3),
    "afd": dict(method="afd", backbones=("resnet8", "wrn10_2")),
    "ffcl": dict(method="ffcl", backbones=("resnet8", "wrn10_1"), regularization_knowledge=False),
    "vanilla": dict(method="vanilla"),
    "kd": dict(method="kd", num_branches=0),
    "cl_ilr": dict(method="cl_ilr", num_branches=4),
    "okddip": dict(method="okddip", num_branches=3),
    "kdcl": dict(method="kdcl", backbones=("resnet8", "wrn10_1")),
    "mcl_okd": dict(method="mcl_okd", num_branches=3, nce_k=6),
    "pcl": dict(method="pcl", num_branches=3),
}


def method_case(method, teacher_dir="", **overrides):
    """``METHOD_CASES[method]`` with ``overrides``, and the teacher run where it needs one."""
    case = dict(METHOD_CASES[method], **overrides)
    if method == "kd":
        case["teacher_dir"] = teacher_dir
    return case


def tiny_config(**overrides):
    """A validated Config on synthetic data with ResNet-8 branches: fast on 2 cores."""
    base = dict(
        dataset="synthetic",
        backbones=("resnet8",),
        num_branches=2,
        train_examples=64,
        test_examples=32,
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
        lr_milestones=(),
        rampup_epochs=0,
        verbose=0,
    )
    base.update(overrides)
    return Config(**base).validated()


def temperature_of(overrides):
    """The temperature a run with these Config ``overrides`` trains at (the method's own unless
    given), as the command line resolves it."""
    return Config(**overrides).with_method_distillation_defaults().temperature


def model_for(config, classes=10, shape=(32, 32, 3)):
    """The method model of ``config`` on ``shape`` images, seeded (imports Keras)."""
    import keras

    from keras_ffl.build import build_model

    keras.utils.set_random_seed(0)
    return build_model(config, classes, shape)


def compiled_model_for(config, steps_per_epoch=4, classes=10):
    """``model_for``, compiled as the command line compiles it."""
    from keras_ffl.build import compile_model

    model = model_for(config, classes)
    compile_model(model, config, steps_per_epoch)
    return model


def means(terms):
    """``{term: its batch mean}`` of a method's loss terms, as floats (any backend)."""
    from keras import ops

    return {n: float(ops.convert_to_numpy(ops.mean(v))) for n, v in terms.items()}


def replace(config, **changes):
    return dataclasses.replace(config, **changes).validated()


def random_batch(batch=8, shape=(32, 32, 3), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, *shape)).astype("float32"), rng.integers(0, classes, batch).astype("int64")


def read_weights(path):
    """Every array of a ``.weights.h5`` file, by its path inside the file."""
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: values.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return values


def train_until_interrupted(config, after_epoch=1):
    """Trains ``config`` and interrupts it (KeyboardInterrupt) at the end of ``after_epoch``,
    as Ctrl-C would: the run's directory holds what the callbacks wrote up to then."""
    import keras
    import pytest

    from keras_ffl.train import train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == after_epoch:
                raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[Interrupt()])


#: How far two float32 runs of one computation may drift apart, in units of how far float32
#: runs drift from the float64 run of the same computation.  Each float32 run rounds the
#: exact result differently (other summation orders: replicas, kernels, backends), so
#: |a - b| <= |a - a64| + |b - a64|.  The drift is measured on two float32 runs of the
#: reference computation (as given, and on the batch in another order, which sums every
#: reduction in another order), never on the run under test, whose own defect would widen
#: its bound.  Two samples underestimate the spread: a third honest run exceeds the larger
#: of two about one time in three, and the run under test uses other kernels.  Measured on
#: every array of the replica, backend and parity tests, on AVX2 and AVX-512 CPUs, the
#: largest ratio of difference to drift was 12 (the PyTorch reference on an AVX-512 CPU with
#: other work beside the suite); 32 leaves a margin of 2.7 over it.  A real defect (a dropped
#: update, unsynchronised BatchNorm, a temporal mean that never moves) is 10^2 to 10^5 times
#: the drift: ``test_backends.py`` and ``test_distributed.py`` plant one and see it fail.
FLOAT32_NOISE_FACTOR = 32.0
#: No tolerance below this many float32 ulps of the array's size: an array that both
#: samples happen to round nearly exactly (a sum of a few terms) still differs by a few ulps
#: under other kernels; 64 covers a reduction over a few hundred terms.
FLOAT32_ULPS_FLOOR = 64


def float32_tolerances(samples, references64, scales=None):
    """``{name: largest difference two float32 computations of that array may show}`` from
    float32 ``samples`` (dicts of arrays by name) of the computation and its float64 run:
    ``FLOAT32_NOISE_FACTOR`` times the largest drift of a sample from float64, and at least
    ``FLOAT32_ULPS_FLOOR`` float32 ulps of the array's size, or of ``scales[name]`` where the value is a small
    difference of larger quantities (a KL term: cross-entropy minus entropy).  The ulps
    cover what no reordering shows: another implementation of a short formula rounds
    differently (Keras's BN moving-average factor 1 - 0.9 is 0.10000002 in float32)."""
    scales = scales or {}
    eps = float(np.finfo(np.float32).eps)
    tolerances = {}
    for name, exact in references64.items():
        exact = np.asarray(exact, np.float64)
        if not exact.size:
            tolerances[name] = 0.0
            continue
        drift = max(float(np.max(np.abs(np.asarray(s[name], np.float64) - exact))) for s in samples)
        size = max(float(np.max(np.abs(exact))), scales.get(name, 0.0))
        tolerances[name] = max(FLOAT32_NOISE_FACTOR * drift, FLOAT32_ULPS_FLOOR * eps * size)
    return tolerances


def assert_within_float32_noise(actual, reference, samples, references64, what="", scales=None):
    """``actual`` must match ``reference`` (both float32 runs, dicts of arrays by name) within
    the tolerances measured from ``samples`` (float32 runs of the reference computation,
    ``reference`` among them, never ``actual``'s own) and
    ``references64`` (see ``float32_tolerances``)."""
    tolerances = float32_tolerances(samples, references64, scales)
    assert actual.keys() == reference.keys() == references64.keys()
    for name, tolerance in tolerances.items():
        difference = float(np.max(np.abs(np.asarray(actual[name], np.float64) - np.asarray(reference[name],
                                                                                            np.float64))))
        assert difference <= tolerance, (
            f"{what} {name}: differs by {difference:.3g}, more than its float32 tolerance {tolerance:.3g}")


def kl_scales(names, temperature, num_classes):
    """For logged KL terms (``kd_*``): the size of the quantities they are the difference of,
    ``T^2 log C`` (the cross-entropy and entropy of softened distributions over C classes).
    Different log/exp kernels (another backend) round those, not the small difference."""
    import math

    return {n: temperature ** 2 * math.log(num_classes) for n in names if "kd_" in n}


#: Arrays smaller than this are measured against it: a bias that starts at 0 holds one
#: update after a step (AFD's discriminators: Adam's +-1e-6), where TensorFlow's float64 step's 5e-8 is
#: amplified by Adam's normalisation into 7e-6 of that tiny size; every defect moves far more.
SMALLEST_SCALE = 1e-4


def disagreements(actual, reference, temperature):
    """``[(relative difference, name)]`` of every array, each relative to its size (at least
    ``SMALLEST_SCALE``; for a logged KL term, the larger quantities it is the difference of)."""
    assert actual.keys() == reference.keys(), set(actual) ^ set(reference)
    scales = kl_scales(reference, temperature, 10)
    out = []
    for name, expected in reference.items():
        expected = np.asarray(expected, np.float64)
        if not expected.size:
            continue
        difference = float(np.max(np.abs(np.asarray(actual[name], np.float64) - expected)))
        size = max(float(np.max(np.abs(expected))), scales.get(name, 0.0), SMALLEST_SCALE)
        out.append((difference / size, name))
    return sorted(out, reverse=True)


def method_inputs(config, images, nce_seed=0):
    """What a method trains on for a batch of ``images``: the images, or the dict of views,
    indices and contrast negatives its data pipeline would give (deterministic), as its
    declaration's ``data_needs`` asks."""
    needs = config.options.data_needs(config)
    if needs.get("views", 1) > 1:
        variants = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
        return {"images": images, "views": np.stack([variants[k % 4] for k in range(config.num_branches)], axis=1)}
    if needs.get("with_index"):
        from keras_ffl.build import train_size_of

        size = train_size_of(config)
        index = np.arange(len(images)) % size
        rng = np.random.default_rng(nce_seed)
        negatives = rng.integers(0, size, (len(images), config.options.nce_k))
        return {"images": images, "index": index, "contrast": np.concatenate([index[:, None], negatives], axis=1)}
    return images


def reverse_batch(inputs):
    if isinstance(inputs, dict):
        return {k: v[::-1].copy() for k, v in inputs.items()}
    return inputs[::-1].copy()


#: ``python -c KILL_AT_STEP N <train flags>``: the train command with a callback that SIGKILLs
#: the process after training step N of the run (counted from epoch 0: the epoch-relative
#: batch index plus the steps of the epochs before).
KILL_AT_STEP = """
import os, signal, sys
import keras
from keras_ffl.train import parse_config, train

class KillAtStep(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * int(self.params["steps"]) + batch + 1 == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

train(parse_config(["train", *sys.argv[2:]]), extra_callbacks=[KillAtStep()])
"""


#: What TensorFlow prints at start-up on these CPUs, whatever TF_CPP_MIN_LOG_LEVEL says.
START_UP_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "single_machine.cc",
                  "devices.cc", "FutureWarning")


def user_env(*, drop=(), **extra):
    """The environment a user's shell would give a command: the suite's quieting of TensorFlow
    (conftest) taken out, so a test sees what the user sees; ``drop`` removes more names."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", *drop)}
    env.update(extra)
    return env


def run_cli(module, *args, timeout=600, cwd=None):
    """``python -m keras_ffl.<module> args...`` from the repository, as a user runs it."""
    from conftest import REPO

    return subprocess.run([sys.executable, "-m", f"keras_ffl.{module}", *args], capture_output=True, text=True,
                          timeout=timeout, env=user_env(PYTHONPATH=REPO), cwd=cwd or REPO)


def assert_starts_quietly(result):
    noisy = [line for line in result.stderr.splitlines() if any(n in line for n in START_UP_NOISE)]
    assert not noisy, noisy
