"""DML, ONE and vanilla: losses against numpy, update order, invalid combinations, and that
each trains, saves, restores and evaluates through the same path as FFL."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from helpers import means, model_for, random_batch, tiny_config
from keras_ffl.build import compile_model
from keras_ffl.config import ConfigError

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "golden_losses.json")))["ffl"]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dml_loss_equals_numpy(case, temperature):
    c = GOLDEN[case]
    k, classes = len(c["logits"]), len(c["fused"][0])
    model = model_for(tiny_config(method="dml", num_branches=k, temperature=temperature), classes)
    logits = [tf.constant(z, tf.float32) for z in c["logits"]]
    terms = model.compute_losses({"logits": logits}, tf.constant(c["labels"]))
    expected = ref.dml_terms([np.array(z) for z in c["logits"]], np.array(c["labels"]), temperature)
    assert means(terms) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_one_loss_equals_numpy(case):
    c = GOLDEN[case]
    k, classes = len(c["logits"]), len(c["fused"][0])
    model = model_for(tiny_config(method="one", num_branches=k), classes)
    teacher = tf.constant(c["fused"], tf.float32)
    outputs = {"logits": [tf.constant(z, tf.float32) for z in c["logits"]], "teachers": {"teacher": teacher}}
    terms = model.compute_losses(outputs, tf.constant(c["labels"]))
    expected = ref.one_terms([np.array(z) for z in c["logits"]], np.array(c["fused"]), np.array(c["labels"]), 3.0)
    assert means(terms) == pytest.approx(expected, rel=1e-5)


def test_one_gated_teacher_equals_numpy_gate():
    model = model_for(tiny_config(method="one", num_branches=3))
    x, _ = random_batch(6)
    outputs = model.forward(x, training=False)
    gate = model.gate
    pooled = outputs["shared"].numpy().mean(axis=(1, 2))
    weights = ref.one_gate(pooled, gate.dense.kernel.numpy(), gate.dense.bias.numpy(), gate.bn.moving_mean.numpy(),
                           gate.bn.moving_variance.numpy(), gate.bn.gamma.numpy(), gate.bn.beta.numpy())
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    expected = ref.one_teacher([z.numpy() for z in outputs["logits"]], weights)
    np.testing.assert_allclose(outputs["teachers"]["teacher"].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert model.part_names == ["net0", "net1", "net2", "ensemble", "teacher"]


def test_vanilla_is_cross_entropy_only_and_allows_one_network():
    model = model_for(tiny_config(method="vanilla", num_branches=1))
    x, y = random_batch(8)
    outputs = model.forward(x, training=False)
    terms = model.compute_losses(outputs, y)
    assert list(terms) == ["ce_net0"]
    assert means(terms)["ce_net0"] == pytest.approx(ref.cross_entropy(outputs["logits"][0].numpy(), y), rel=1e-5)
    assert model.part_names == ["net0", "ensemble"]


def test_dml_sequential_update_follows_the_paper_order():
    """Net 1's step must use the predictions of the already-updated net 0."""
    config = tiny_config(method="dml", dml_update="sequential", momentum=0.0, weight_decay=0.0, lr=0.5,
                         nesterov=False, rampup_epochs=0)
    model = model_for(config)
    compile_model(model, config, 4)
    x, y = random_batch(8, seed=5)
    start = [[v.numpy().copy() for v in b.trainable_variables] for b in model.branches]

    def grads_for(k):
        with tf.GradientTape() as tape:
            logits = model.forward(x, training=True)["logits"]
            loss = tf.reduce_mean(ref_free_loss(model, logits, k, y))
        return tape.gradient(loss, model.branches[k].trainable_variables)

    def ref_free_loss(m, logits, k, labels):
        from keras_ffl.losses import cross_entropy, mean_peer_kl
        return cross_entropy(logits[k], labels) + mean_peer_kl(logits, k, m.temperature)

    # Expected: update net 0 from the initial state, then net 1 against updated net 0.
    expected = []
    for k in range(2):
        g = grads_for(k)
        for v, gv in zip(model.branches[k].trainable_variables, g):
            v.assign(v - 0.5 * gv)
        expected.append([v.numpy().copy() for v in model.branches[k].trainable_variables])
    for b, values in zip(model.branches, start):  # back to the start, then the real step
        for v, value in zip(b.trainable_variables, values):
            v.assign(value)
    model.train_step((tf.constant(x), tf.constant(y)))
    for k in range(2):
        for v, e in zip(model.branches[k].trainable_variables, expected[k]):
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-6)
    assert int(model.optimizer.iterations.numpy()) == 1  # one schedule step per mini-batch


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(method="one", backbones=("resnet8", "wrn10_1")), "needs the same architecture"),
        (dict(method="one", topology="independent"), "does not support --topology=independent"),
        (dict(method="dml", topology="shared"), "does not support --topology=shared"),
        (dict(method="dml", num_branches=1), "at least 2"),
    ],
)
def test_invalid_method_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [dict(method="dml"), dict(method="dml", dml_update="sequential", backbones=("resnet8", "wrn10_1")),
     dict(method="one", num_branches=3), dict(method="vanilla"),
     dict(method="ffcl", backbones=("resnet8", "wrn10_1"))],
    ids=["dml", "dml-sequential-mixed", "one-3", "vanilla", "ffcl-mixed"],
)
def test_a_few_steps_lower_the_loss(overrides):
    config = tiny_config(lr=0.05, **overrides)
    model = model_for(config)
    compile_model(model, config, 4)
    x, y = random_batch(32, seed=3)
    first = float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    model.fit(x, y, batch_size=16, epochs=10, verbose=0)  # 20 steps (FFCL's fused module needs them)
    assert float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"]) < 0.85 * first


@pytest.mark.parametrize("method", ["dml", "one", "vanilla", "afd"])
def test_train_save_restore_evaluate_give_the_same_numbers(tmp_path, method):
    from keras_ffl.evaluate import evaluate
    from keras_ffl.train import train

    config = tiny_config(method=method, epochs=2, validation_freq=0, model_dir=str(tmp_path / method))
    report = train(config)
    rows, _, _ = evaluate(config.model_dir)
    assert set(rows) == set(report["results"])
    for part, row in report["results"].items():
        assert rows[part]["top1"] == pytest.approx(row["top1"], abs=1e-6)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    from keras_ffl.train import train

    config = tiny_config(method="ffl", epochs=1, validation_freq=0, model_dir=str(tmp_path_factory.mktemp("t") / "ffl"))
    train(config)
    return config.model_dir


@pytest.mark.parametrize("part", ["fused", "net1"])
def test_offline_kd_loss_and_frozen_teacher(trained_teacher, part):
    config = tiny_config(method="kd", teacher_dir=trained_teacher, teacher_part=part, num_branches=0)
    assert config.num_branches == 1
    model = model_for(config)
    compile_model(model, config, 4)
    x, y = random_batch(16)
    outputs = model.forward(x, training=False)
    teacher_logits = outputs["teachers"]["teacher"].numpy()
    terms = model.compute_losses(outputs, y)
    student = outputs["logits"][0].numpy()
    expected = {"ce_net0": ref.cross_entropy(student, y), "kd_net0": ref.distillation_kl(student, teacher_logits, 3.0)}
    assert means(terms) == pytest.approx(expected, rel=1e-4)  # a trained teacher: larger logits, float32 sums
    teacher_before = [w.copy() for w in model.teacher.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(teacher_before, model.teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # frozen, BN statistics included
    np.testing.assert_allclose(model.forward(x)["teachers"]["teacher"].numpy(), teacher_logits, rtol=1e-5, atol=1e-6)


def test_offline_kd_end_to_end(trained_teacher, tmp_path):
    from keras_ffl.evaluate import evaluate
    from keras_ffl.train import train

    config = tiny_config(method="kd", teacher_dir=trained_teacher, teacher_part="fused", num_branches=0, epochs=1,
                         validation_freq=0, model_dir=str(tmp_path / "kd"))
    report = train(config)
    assert list(report["results"]) == ["net0", "S-avg", "ensemble", "teacher"]
    rows, _, _ = evaluate(config.model_dir)
    for part, row in report["results"].items():
        assert rows[part]["top1"] == pytest.approx(row["top1"], abs=1e-6)


def test_offline_kd_refuses_bad_teachers(trained_teacher, tmp_path):
    with pytest.raises(ConfigError, match="needs --kd_teacher_dir"):
        tiny_config(method="kd")
    with pytest.raises(ConfigError, match="no config.json"):
        tiny_config(method="kd", teacher_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--kd_teacher_dir was trained on synthetic, this run uses fashion_mnist"):
        tiny_config(method="kd", teacher_dir=trained_teacher, dataset="fashion_mnist")
    with pytest.raises(ConfigError, match="teacher_part=teacher: .*choose from net0, net1, ensemble, fused"):
        model_for(tiny_config(method="kd", teacher_dir=trained_teacher, teacher_part="teacher", num_branches=0))


def test_vanilla_defaults_to_independent_networks_and_allows_a_shared_trunk():
    assert tiny_config(method="vanilla").topology == "independent"
    assert tiny_config(method="ffl").topology == "shared"
    shared = tiny_config(method="vanilla", topology="shared", num_branches=3)  # bench's CE-only baseline for ONE
    model = model_for(shared)
    assert model.trunk is not None and list(model.term_names) == ["ce_net0", "ce_net1", "ce_net2"]
