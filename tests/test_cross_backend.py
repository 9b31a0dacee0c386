"""Every method computes the same thing on every backend: the cross-backend harness.

For each method (and the paths that differ inside one: a trunk or not, mixed architectures,
sequential updates, two optimisers, hierarchical sharing, views, teachers of every kind,
memory banks, a temporal mean), the same tiny model from the same initial weights and
optimiser state takes the same three batches through ``fit`` on TensorFlow, JAX and PyTorch,
in float64.  After *every* step, every variable the model holds (trainable and not: BatchNorm
statistics, memory banks, temporal means, the epoch and step counters), every optimiser
variable (momenta, Adam's moments, iteration counters) and every logged loss must agree
across backends.

Why float64: two correct backends then differ by far less than float32 noise, so a bound
far below any real defect holds on any CPU.  ``FLOAT64_AGREEMENT`` is that bound, with the
differences measured beside it; the tests print each case's largest.  A defect changes the
state by the size of an update: the planted ones below (the temporal mean never moving,
KDCL's teacher not detached) move it by 1e-3 and more, and the test shows they fail the same
comparison.  The float32 path of every engine is held to float32 noise by
``test_backends.py``; this file holds the semantics.

The update rules are checked on each backend's own recorded steps: PCL's temporal mean
(a copy of the live network after the first step, then ``a = 1/2``, ``2/3``), its own
BatchNorm statistics and its step counter; MCL-OKD's memory rows (only the batch's rows move,
each L2-normalised).  Gradient routing (what the authors' code detaches, CL-ILR's rescaling,
OKDDip's attention through its targets) is tested against numpy on TensorFlow
(``test_comparison_methods.py``, ``test_methods.py``...); equal float64 states after three
steps carry it to the other two backends.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from helpers import disagreements, method_inputs, temperature_of, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
STEPS, BATCH, EPOCH = 3, 8, 40

#: Every method, and each path inside one that the others do not take; ramp-up at epoch 40 of 80.
CASES = {
    "ffl-resnet-wrn": dict(method="ffl", backbones=("resnet8", "wrn10_1"), fusion_channels=32),
    "dml-sequential": dict(method="dml", dml_update="sequential", temperature=3.0),
    "one-3": dict(method="one", num_branches=3),
    "vanilla": dict(method="vanilla"),
    "kd": dict(method="kd", num_branches=0),
    # Adam moves each discriminator weight by about +-lr whatever its gradient, so a small lr
    # keeps rounding in near-zero gradients from moving the adversarial terms (test_backends.py).
    "afd": dict(method="afd", backbones=("resnet8", "wrn10_2"), feature_lr=1e-6),
    "ffcl": dict(method="ffcl", backbones=("resnet8", "wrn10_1")),
    "cl_ilr-tree": dict(method="cl_ilr", num_branches=4),
    "cl_ilr-flat": dict(method="cl_ilr", num_branches=4, cl_ilr_preset="okddip"),
    "okddip": dict(method="okddip", num_branches=4),
    "kdcl-linear": dict(method="kdcl", num_branches=3, kdcl_teacher="linear"),
    "mcl_okd": dict(method="mcl_okd", num_branches=3, nce_k=6),
    "pcl": dict(method="pcl", num_branches=3),
}
#: Known bugs planted on one backend (``backend_fit.plant``), each of which must fail the check.
DEFECTS = {"pcl": ("jax", "frozen_mean"), "kdcl-linear": ("torch", "attached_teacher")}

#: Two float64 computations of the same steps may differ by this much, relative to the
#: array's size.  Measured after three steps: 5.3e-15 to 3.9e-14 between any two backends
#: (ONE's gate: 1.8e-12); a planted defect moves the state by 1e-1 and more.  50x over the
#: measured, 10^9 below a defect.
FLOAT64_AGREEMENT = 1e-10
#: Keras's TensorFlow backend casts a Python float to float64 through float32
#: (``ops.cast(0.9, "float64")`` is 0.8999999762 there, 0.9 on JAX and PyTorch), so an
#: optimiser's constants differ in the last float32 digit on TensorFlow alone.  The SGD steps
#: here use momentum 0.875, exact in float32; AFD's Adam keeps the paper's beta_1 = 0.9,
#: beta_2 = 0.999 and epsilon = 1e-7, which leaves TensorFlow 2.0e-7 from the other two
#: (measured; with momentum 0.9 every method sat at 4.6e-8 to 1.0e-7).
ROUNDED_CONSTANTS_ON_TENSORFLOW = {"afd": 1e-6}


def backend_env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO)
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"  # else JAX computes a float64 policy in float32
        env.pop("XLA_FLAGS", None)
    return env


def run_fits(cases, backend, path):
    with open(path, "w") as f:
        json.dump(cases, f)
    result = subprocess.run([sys.executable, os.path.join(HERE, "backend_fit.py"), path], env=backend_env(backend),
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    print("".join(line + "\n" for line in result.stderr.splitlines() if line.endswith(" s")), end="")


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """``{case: {backend: recorded steps}}`` and the planted defects' ``{case: steps}``."""
    import keras

    from keras_ffl.build import build_model, compile_model
    from keras_ffl.train import train

    folder = tmp_path_factory.mktemp("cross_backend")
    teacher = tiny_config(method="vanilla", num_branches=1, epochs=1, validation_freq=0,
                          model_dir=str(folder / "teacher"))
    train(teacher)
    rng = np.random.default_rng(5)
    images = rng.normal(size=(STEPS * BATCH, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, STEPS * BATCH).astype("int64")
    cases, defects = [], {}
    for name, overrides in CASES.items():
        overrides = dict(lr=0.1, momentum=0.875, rampup_epochs=80, **overrides)  # exact in float32: see above
        if overrides["method"] == "kd":
            overrides["teacher_dir"] = teacher.model_dir
        keras.utils.set_random_seed(0)
        config = tiny_config(**overrides)
        inputs = method_inputs(config, images)
        as_dict = inputs if isinstance(inputs, dict) else {"images": inputs}
        batches = folder / f"{name}-batches.npz"
        np.savez(batches, y=labels, **{f"in_{k}": v for k, v in as_dict.items()})
        model = build_model(config, 10, images.shape[1:])
        compile_model(model, config, STEPS)
        weights = str(folder / f"{name}.weights.h5")
        model.save_weights(weights)
        keras.backend.clear_session()
        case = dict(overrides=overrides, weights=weights, batches=str(batches), batch_size=BATCH, epoch=EPOCH,
                    dtype="float64")
        cases.append(dict(case, name=name))
        if name in DEFECTS:
            backend, defect = DEFECTS[name]
            defects[name] = dict(case, defect=defect, output=str(folder / f"{name}-{defect}.npz"), backend=backend)
    for backend in BACKENDS:
        run_fits([dict(c, output=str(folder / f"{c['name']}-{backend}.npz")) for c in cases], backend,
                 str(folder / f"{backend}.json"))
    for name, case in defects.items():  # one process each: a planted defect stays in its process
        run_fits([case], case["backend"], str(folder / f"{name}-defect.json"))
    recorded = {name: {b: dict(np.load(folder / f"{name}-{b}.npz")) for b in BACKENDS} for name in CASES}
    planted = {name: dict(np.load(case["output"])) for name, case in defects.items()}
    return recorded, planted


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_variable_after_every_step_agrees_with_tensorflow(fits, case, backend):
    recorded, _ = fits
    reference = recorded[case]["tensorflow"]
    assert any(" logged loss" in k for k in reference) and any("optimizer variable" in k for k in reference)
    assert {k.split(" ")[0] for k in reference} - {"meta"} == {f"step{i}" for i in range(STEPS)}
    worst = disagreements(recorded[case][backend], reference, temperature_of(CASES[case]))
    print(f"{case} {backend} vs tensorflow: largest relative difference {worst[0][0]:.2e} ({worst[0][1]})")
    bound = ROUNDED_CONSTANTS_ON_TENSORFLOW.get(CASES[case]["method"], FLOAT64_AGREEMENT)
    assert worst[0][0] <= bound, f"{case} on {backend}: {worst[:5]}"


@pytest.mark.parametrize("case", list(CASES))
def test_jax_and_pytorch_agree_with_each_other(fits, case):
    recorded, _ = fits
    worst = disagreements(recorded[case]["torch"], recorded[case]["jax"], temperature_of(CASES[case]))
    print(f"{case} torch vs jax: largest relative difference {worst[0][0]:.2e} ({worst[0][1]})")
    assert worst[0][0] <= FLOAT64_AGREEMENT, f"{case}: {worst[:5]}"


@pytest.mark.parametrize("case", list(DEFECTS))
def test_a_planted_defect_fails_the_same_comparison(fits, case):
    recorded, planted = fits
    worst = disagreements(planted[case], recorded[case]["tensorflow"], temperature_of(CASES[case]))
    print(f"{case} with {DEFECTS[case][1]}: largest relative difference {worst[0][0]:.2e} ({worst[0][1]})")
    assert worst[0][0] > 100 * FLOAT64_AGREEMENT, f"{DEFECTS[case]} went unnoticed: {worst[:3]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcl_temporal_mean_follows_its_rule_on_every_backend(fits, backend):
    """theta' <- a theta' + (1 - a) theta after each step, a = min(1 - 1/(step + 1), 0.999): a
    copy after step 0, then a = 1/2 and 2/3; BatchNorm statistics are the mean network's own."""
    state = fits[0]["pcl"][backend]
    keys = [k[len("step0 "):] for k in state if k.startswith("step0 variable ")]
    at = {int(k.split(" ")[1]): k for k in keys}  # position in model.weights -> its key

    def value(step, position):
        return np.asarray(state[f"step{step} {at[position]}"], np.float64)

    pairs = state["meta trainable pairs"]
    assert len(pairs) > 20
    for live, mean in pairs:
        np.testing.assert_array_equal(value(0, mean), value(0, live))
        for step, a in ((1, 0.5), (2, 2.0 / 3.0)):
            np.testing.assert_allclose(value(step, mean), a * value(step - 1, mean) + (1 - a) * value(step, live),
                                       rtol=1e-9, atol=1e-12)
    assert sum(not np.allclose(value(2, m), value(0, m)) for _, m in pairs) > 0.9 * len(pairs)
    statistics = state["meta statistics pairs"]
    assert len(statistics) > 10
    for live, mean in statistics:  # its own running statistics, from its own batches
        assert not np.allclose(value(2, mean), value(2, live))
    assert [int(state[f"step2 {k}"]) for k in keys if k.endswith("ema_steps")] == [3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mcl_okd_memory_moves_only_the_batch_rows_to_unit_length_on_every_backend(fits, backend):
    state = fits[0]["mcl_okd"][backend]
    banks = sorted(k[len("step0 "):] for k in state if k.startswith("step0 variable") and "memory" in k)
    assert len(banks) == 3
    for bank in banks:
        for step in range(1, STEPS):
            before, after = state[f"step{step - 1} {bank}"], state[f"step{step} {bank}"]
            rows = np.arange(step * BATCH, (step + 1) * BATCH)  # method_inputs: index = position
            others = np.setdiff1d(np.arange(len(after)), rows)
            np.testing.assert_array_equal(after[others], before[others])
            np.testing.assert_allclose(np.linalg.norm(after[rows], axis=1), 1.0, rtol=1e-9)
            assert not np.allclose(after[rows], before[rows])
