"""On JAX: every method's losses equal the numpy reference on the golden fixtures, and AFD's
two optimisers each update only their own variables and are checkpointed together.

Runs in a process with ``KERAS_BACKEND=jax`` (started by ``tests/test_backends.py``)."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import numpy_reference as ref
from helpers import compiled_model_for, means, model_for, random_batch, tiny_config

GOLDEN = json.load(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                                     "golden_losses.json")))["ffl"]


def test_the_backend_is_jax():
    assert keras.backend.backend() == "jax"


def tensors(logits):
    return [ops.convert_to_tensor(np.asarray(z, np.float32)) for z in logits]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_ffl_terms_and_total_equal_the_golden_fixture(case):
    c = GOLDEN[case]
    k, classes = len(c["logits"]), len(c["fused"][0])
    model = model_for(tiny_config(num_branches=k, temperature=c["temperature"], rampup_epochs=c["rampup_epochs"]),
                      classes)
    model.epoch.assign(float(c["epoch"]))
    logits = tensors(c["logits"])
    outputs = {"logits": logits, "ensemble": ops.mean(ops.stack(logits), axis=0),
               "teachers": {"fused": tensors([c["fused"]])[0]}}
    terms = model.compute_losses(outputs, np.array(c["labels"]))
    assert means(terms) == pytest.approx(c["terms"], rel=1e-5)
    assert float(model.total_loss(terms)) == pytest.approx(c["total"], rel=1e-5)


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_dml_one_afd_ffcl_terms_equal_numpy(case):
    c = GOLDEN[case]
    k, classes = len(c["logits"]), len(c["fused"][0])
    logits, labels = [np.array(z) for z in c["logits"]], np.array(c["labels"])
    dml = model_for(tiny_config(method="dml", num_branches=k, temperature=1.0), classes)
    assert means(dml.compute_losses({"logits": tensors(logits)}, labels)) == pytest.approx(
        ref.dml_terms(logits, labels, 1.0), rel=1e-5)
    one = model_for(tiny_config(method="one", num_branches=k), classes)
    outputs = {"logits": tensors(logits), "teachers": {"teacher": tensors([c["fused"]])[0]}}
    assert means(one.compute_losses(outputs, labels)) == pytest.approx(
        ref.one_terms(logits, np.array(c["fused"]), labels, 3.0), rel=1e-5)
    ffcl = model_for(tiny_config(method="ffcl", num_branches=k, temperature=1.0), classes)
    pretrained = [np.roll(z, 1, axis=1) for z in logits]
    outputs = {"logits": tensors(logits), "ensemble": ops.mean(ops.stack(tensors(logits)), axis=0),
               "teachers": {"fused": tensors([c["fused"]])[0],
                            **{f"pretrained{i}": t for i, t in enumerate(tensors(pretrained))}}}
    assert means(ffcl.compute_losses(outputs, labels)) == pytest.approx(
        ref.ffcl_terms(logits, np.array(c["fused"]), pretrained, labels, 1.0), rel=1e-5)
    rng = np.random.default_rng(case)
    batch = len(labels)
    d_fake, d_real = [rng.uniform(size=batch) for _ in range(k)], [rng.uniform(size=batch) for _ in range(k)]
    afd = model_for(tiny_config(method="afd", num_branches=k), 10)
    small = [z[:, :10] for z in logits]
    outputs = {"logits": tensors(small), "d_fake": tensors(d_fake), "d_real": tensors(d_real)}
    assert means(afd.compute_losses(outputs, labels % 10)) == pytest.approx(
        ref.afd_terms(small, labels % 10, 3.0, d_fake, d_real), rel=1e-5)


def afd_model(**overrides):
    return compiled_model_for(tiny_config(method="afd", **overrides))


def test_afd_optimisers_each_update_only_their_variables():
    model = afd_model()
    x, y = random_batch(8)
    classifiers = [v for b in model.branches for v in b.get_layer("classifier").trainable_variables]
    extractors, discriminators = model.feature_variables()

    def snapshot(variables):
        return [np.asarray(v).copy() for v in variables]

    def moved(before, variables):
        return [not np.allclose(b, np.asarray(v)) for b, v in zip(before, variables)]

    model.compile(optimizer=keras.optimizers.SGD(0.0), feature_optimizer=keras.optimizers.Adam(1e-3))
    watched = classifiers + extractors + discriminators
    before = snapshot(watched)
    model.train_on_batch(x, y)
    changed = moved(before, watched)
    n_cls, n_ext = len(classifiers), len(extractors)
    assert not any(changed[:n_cls])  # Adam never touches the classifiers
    assert sum(changed[n_cls:n_cls + n_ext]) > n_ext // 2 and all(changed[n_cls + n_ext:])

    model.compile(optimizer=keras.optimizers.SGD(0.1), feature_optimizer=keras.optimizers.Adam(0.0))
    before = snapshot(classifiers + discriminators)
    model.train_on_batch(x, y)
    changed = moved(before, classifiers + discriminators)
    assert all(changed[:n_cls]) and not any(changed[n_cls:])  # SGD never touches the discriminators


def test_afd_both_optimisers_states_are_saved_and_restored(tmp_path):
    model = afd_model()
    x, y = random_batch(8)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    features, networks = model.optimizer_for("features"), model.optimizer_for("networks")
    assert int(features.iterations) == int(networks.iterations) == int(model.optimizer.iterations) == 3
    path = str(tmp_path / "afd.weights.h5")
    model.save_weights(path)
    fresh = afd_model()
    fresh.load_weights(path)
    assert int(fresh.optimizer_for("features").iterations) == 3
    assert len(model.optimizer.variables) == len(fresh.optimizer.variables) > 10
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Adam's moments moved: the state that was saved is the trained one, not the initial one.
    assert any(float(np.max(np.abs(np.asarray(v)))) > 0 for v in features.variables[2:])


def test_a_cpu_split_asked_for_after_jax_started_is_one_clear_error(tmp_path):
    """``--cpu_devices`` splits the CPU through XLA_FLAGS, which JAX reads once: in a Python
    process where JAX already runs on one device, the run stops before any work."""
    import jax

    from keras_ffl.config import ConfigError
    from keras_ffl.train import train

    assert len(jax.devices()) == 1
    config = tiny_config(strategy="mirrored", cpu_devices=2, model_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--cpu_devices=2 but JAX started with 1 CPU device.*XLA_FLAGS"):
        train(config)
    assert not (tmp_path / "run" / "config.json").exists()
