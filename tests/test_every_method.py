"""The per-method harness: every registered method through the same checks.

Each method's tiny case (``helpers.METHOD_CASES``) goes through the paths a user takes:
``fit`` from Python in mixed precision with loss scaling on every optimiser; the command line
end to end in mixed precision (report, history, ``evaluate`` from the model_dir).  The other
per-method checks iterate over the same registry: the Python API and ``.keras`` round trips
(``test_api.py``), 1 vs 2 replicas (``test_distributed.py``) and the three backends with all
state compared (``test_cross_backend.py``); ``test_registry.py`` fails the suite while any of
them lacks a registered method.
"""

import csv

import keras
import numpy as np
import pytest

from helpers import METHOD_CASES, method_case, method_inputs, model_for, random_batch, tiny_config
from keras_ffl.build import compile_model

POLICIES = [(method, "mixed_float16") for method in METHOD_CASES] + [("ffl", "mixed_bfloat16")]


@pytest.mark.parametrize("method,policy", POLICIES, ids=[f"{m}-{p.split('_')[1]}" for m, p in POLICIES])
def test_fit_in_mixed_precision_scales_every_loss_and_updates_every_variable(method, policy, teacher_run):
    keras.mixed_precision.set_global_policy(policy)
    config = tiny_config(mixed_precision=policy, **method_case(method, teacher_run))
    model = model_for(config)
    compile_model(model, config, 4)
    if policy == "mixed_float16":  # every optimiser scales its loss, AFD's Adam included
        assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in model.optimizers)
    images, y = random_batch(16)
    x = method_inputs(config, images)
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    assert all(np.isfinite(history["loss"]))
    assert all(v.dtype == "float32" for v in model(x).values())  # losses and reports in float32
    assert model.branches[0].layers[1].compute_dtype == policy.split("_")[1]  # the convolutions run in half
    unchanged = [v.path for a, v in zip(before, model.trainable_variables) if np.allclose(a, v.numpy())]
    assert not unchanged, unchanged  # every variable received a gradient


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_command_line_run_in_mixed_precision_then_evaluate_gives_the_report(tmp_path, method, teacher_run):
    """The command line's path end to end: float16 compute with loss scaling, the report's parts
    (every peer, the ensemble, the method's teachers), then evaluate from the model_dir."""
    from keras_ffl.build import load_run
    from keras_ffl.evaluate import evaluate
    from keras_ffl.train import train

    config = tiny_config(**method_case(method, teacher_run), epochs=2, lr=0.05, validation_freq=0,
                         mixed_precision="mixed_float16", model_dir=str(tmp_path / method))
    report = train(config)
    with open(tmp_path / method / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 2 and all(np.isfinite(float(row["loss"])) for row in history)
    keras.mixed_precision.set_global_policy("float32")
    model, _ = load_run(config.model_dir)
    assert set(report["results"]) == {*model.part_names, "S-avg"}
    rows, _, _ = evaluate(config.model_dir)
    assert set(rows) == set(report["results"])
    for part, row in report["results"].items():
        assert rows[part]["top1"] == pytest.approx(row["top1"], abs=1e-6), part
