"""The JAX and PyTorch engines against the TensorFlow engine, and the JAX-only checks.

One float32 step of one method of each update pattern on JAX equals the same step on
TensorFlow from the same initial weights and optimiser state (loaded from one
backend-neutral ``.weights.h5``): logged losses, every weight (BN statistics included) and
every optimiser variable (AFD's Adam included), within the float32 noise of that step: how
far TensorFlow's float32 step, on the batch and on the batch in reverse order, lands from
the float64 step (``helpers.float32_tolerances``); the run under test is never among its own
noise samples, and a planted defect fails the same bound.  The same step on two JAX devices
(``keras.distribution.DataParallel`` over ``--xla_force_host_platform_device_count=2``) and
on Keras's torch backend does too.  ``test_cross_backend.py`` holds every method to the same
semantics on all three backends in float64, over three steps through ``fit``.

The checks that must run inside a JAX process (``tests/jax_backend/``) run in a subprocess
with ``KERAS_BACKEND=jax``: a Keras process has one backend.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from helpers import (assert_within_float32_noise, kl_scales, method_inputs, random_batch, reverse_batch, temperature_of,
                     tiny_config)

HERE = os.path.dirname(os.path.abspath(__file__))

#: One method of each update pattern (one optimiser; two in a group; sequential phases; state
#: updated after the step), with mixed architectures and the ramp-up at epoch 40 of 80: the
#: float32 path of each engine.  ``test_cross_backend.py`` holds every method's semantics.
CASES = {
    "ffl-resnet-wrn": dict(method="ffl", backbones=("resnet8", "wrn10_1"), fusion_channels=32),
    "dml-sequential": dict(method="dml", dml_update="sequential"),
    "afd": dict(method="afd", backbones=("resnet8", "wrn10_2"), feature_lr=1e-6),
    "pcl": dict(method="pcl", num_branches=3),
}
#: The cases also run on two JAX devices and on the torch backend.
DISTRIBUTED = tuple(CASES)
#: A known bug planted in one JAX run (``backend_fit.plant``) that the tolerance must catch.
PLANTED = ("pcl", "frozen_mean")
EPOCH = 40


def jax_env(devices=1):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def run_backend_steps(cases, backend, path):
    with open(path, "w") as f:
        json.dump(cases, f)
    env = jax_env(devices=2) if backend == "jax" else dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, os.path.join(HERE, "backend_step.py"), path], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """For every case: the initial state file, then the step's results on TensorFlow in
    float32 (on the batch, and on the batch reversed), in float64, on JAX (likewise) and, for
    ``DISTRIBUTED``, on two JAX devices and on torch (likewise)."""
    import keras

    from keras_ffl.build import build_model, compile_model

    folder = tmp_path_factory.mktemp("backends")
    x, y = random_batch(8, seed=11)
    cases = {"tensorflow": [], "jax": [], "torch": []}
    for name, overrides in CASES.items():
        overrides = dict(lr=0.1, momentum=0.9, rampup_epochs=80, **overrides)
        keras.utils.set_random_seed(0)
        config = tiny_config(**overrides)
        inputs = method_inputs(config, x)
        as_dict = inputs if isinstance(inputs, dict) else {"images": inputs}
        batches = {"batch": folder / f"{name}-batch.npz", "reversed": folder / f"{name}-reversed.npz"}
        np.savez(batches["batch"], y=y, **{f"in_{k}": v for k, v in as_dict.items()})
        np.savez(batches["reversed"], y=y[::-1].copy(), **{f"in_{k}": v for k, v in reverse_batch(as_dict).items()})
        model = build_model(config, 10, x.shape[1:])
        compile_model(model, config, 4)
        weights = str(folder / f"{name}.weights.h5")
        model.save_weights(weights)
        keras.backend.clear_session()
        case = dict(overrides=overrides, weights=weights, epoch=EPOCH)

        def run(prefix, batch_names, **extra):
            return dict(case, **extra, steps=[dict(batch=str(batches[b]), output=str(folder / f"{name}-{prefix}"
                                                                                     f"{'-reversed' if b == 'reversed' else ''}.npz"))
                                              for b in batch_names])

        cases["tensorflow"] += [run("tf32", ("batch", "reversed")), run("tf64", ("batch",), dtype="float64")]
        cases["jax"].append(run("jax32", ("batch",)))
        if name in DISTRIBUTED:
            cases["jax"].append(run("jax32-2devices", ("batch",), data_parallel=2))
            cases["torch"].append(run("torch32", ("batch",)))
        if name == PLANTED[0]:
            planted = run(f"jax32-{PLANTED[1]}", ("batch",), defect=PLANTED[1])
    from backend_step import run_case

    for case in cases["tensorflow"]:
        run_case(case)
        keras.backend.clear_session()
    run_backend_steps(cases["jax"], "jax", str(folder / "jax-cases.json"))
    run_backend_steps(cases["torch"], "torch", str(folder / "torch-cases.json"))
    run_backend_steps([planted], "jax", str(folder / "planted-cases.json"))  # its own process
    return {name: {path.stem[len(name) + 1:]: dict(np.load(path)) for path in folder.glob(f"{name}-*.npz")
                   if not path.stem.endswith(("-batch", "-reversed")) or path.stem.endswith("tf32-reversed")}
            for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_on_jax_equals_the_tensorflow_step(steps, case):
    results = steps[case]
    tf32, reversed_tf32, tf64, jax32 = (results[r] for r in ("tf32", "tf32-reversed", "tf64", "jax32"))
    assert any(k.startswith("optimizer variable") for k in tf32)
    assert_within_float32_noise(jax32, tf32, [tf32, reversed_tf32], tf64, what=f"{case} JAX vs TensorFlow",
                                scales=kl_scales(tf32, temperature_of(CASES[case]), 10))


def test_a_planted_defect_fails_the_float32_tolerance(steps):
    """The same tolerance catches a real defect: PCL's temporal mean frozen on JAX (the bug
    this project once shipped) differs from the TensorFlow step by far more than the noise."""
    case, defect = PLANTED
    results = steps[case]
    with pytest.raises(AssertionError, match="more than its float32 tolerance"):
        assert_within_float32_noise(results[f"jax32-{defect}"], results["tf32"], [results["tf32"],
                                    results["tf32-reversed"]], results["tf64"], what=f"{case} with {defect}",
                                    scales=kl_scales(results["tf32"], temperature_of(CASES[case]), 10))


@pytest.mark.parametrize("case", DISTRIBUTED)
def test_one_step_on_torch_equals_the_tensorflow_step(steps, case):
    results = steps[case]
    samples = [results[r] for r in ("tf32", "tf32-reversed")]
    assert_within_float32_noise(results["torch32"], results["tf32"], samples, results["tf64"],
                                what=f"{case} PyTorch vs TensorFlow",
                                scales=kl_scales(results["tf32"], temperature_of(CASES[case]), 10))


@pytest.mark.parametrize("case", DISTRIBUTED)
def test_one_step_on_two_jax_devices_equals_the_one_device_step(steps, case):
    results = steps[case]
    assert_within_float32_noise(results["jax32-2devices"], results["jax32"],
                                [results["tf32"], results["tf32-reversed"]], results["tf64"],
                                what=f"{case} 2 vs 1 JAX devices",
                                scales=kl_scales(results["tf32"], temperature_of(CASES[case]), 10))
