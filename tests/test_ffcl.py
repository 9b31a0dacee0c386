"""FFCL: losses of every ablation case against numpy, the middle-layer fusion, the frozen
pre-trained copies, and the two-stage run (pre-training, then collaborative training)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from helpers import model_for, random_batch, replace, tiny_config
from keras_ffl.build import compile_model
from keras_ffl.config import ConfigError

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "golden_losses.json")))["ffl"]

#: Paper 004, Table 5: which kinds of knowledge each ablation case keeps.
CASES = {
    "A": dict(response_knowledge=True, feature_knowledge=True, regularization_knowledge=True),
    "B": dict(response_knowledge=False, feature_knowledge=True, regularization_knowledge=True),
    "C": dict(response_knowledge=True, feature_knowledge=False, regularization_knowledge=True),
    "D": dict(response_knowledge=True, feature_knowledge=True, regularization_knowledge=False),
    "E": dict(response_knowledge=True, feature_knowledge=False, regularization_knowledge=False),
    "F": dict(response_knowledge=False, feature_knowledge=True, regularization_knowledge=False),
    "G": dict(response_knowledge=False, feature_knowledge=False, regularization_knowledge=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("golden", [0, len(GOLDEN) - 1])
def test_losses_of_every_ablation_case_equal_numpy(case, golden):
    c = GOLDEN[golden]
    k, classes = len(c["logits"]), len(c["fused"][0])
    switches = CASES[case]
    model = model_for(tiny_config(method="ffcl", num_branches=k, temperature=1.0, **switches), classes)
    logits = [np.array(z) for z in c["logits"]]
    pretrained = [np.random.default_rng(i).normal(size=logits[0].shape) * 2 for i in range(k)]
    teachers = {"fused": tf.constant(c["fused"], tf.float32)}
    teachers.update({f"pretrained{i}": tf.constant(p, tf.float32) for i, p in enumerate(pretrained)})
    tf_logits = [tf.constant(z, tf.float32) for z in logits]
    outputs = {"logits": tf_logits, "ensemble": tf.reduce_mean(tf.stack(tf_logits), axis=0), "teachers": teachers}
    terms = model.compute_losses(outputs, tf.constant(c["labels"]))
    expected = ref.ffcl_terms(logits, np.array(c["fused"]), pretrained, np.array(c["labels"]), 1.0,
                              fk=switches["feature_knowledge"], rk=switches["response_knowledge"],
                              nrk=switches["regularization_knowledge"])
    assert list(terms) == list(expected) == model.term_names
    assert {n: float(tf.reduce_mean(v)) for n, v in terms.items()} == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fusion_layer,size", [("middle", 16), ("last", 8)])
def test_fused_classifier_sees_the_chosen_layer_of_every_peer(fusion_layer, size):
    model = model_for(tiny_config(method="ffcl", backbones=("resnet8", "wrn10_1"), fusion_layer=fusion_layer))
    x, _ = random_batch(4)
    outputs = model.forward(x, training=False)
    if fusion_layer == "middle":
        taps = [keras.Model(b.input, b.get_layer("middle").output)(x) for b in model.branches]
    else:
        taps = outputs["features"]
    assert [t.shape[1] for t in taps] == [size, size]
    fused, _ = model.fusion(taps, training=False)
    np.testing.assert_allclose(outputs["teachers"]["fused"].numpy(), fused.numpy(), rtol=1e-5, atol=1e-6)
    # The taps share the branches' layers: no duplicated weights, same logits.
    np.testing.assert_allclose(outputs["logits"][0].numpy(), model.branches[0](x)[0].numpy(), rtol=1e-5, atol=1e-6)
    parts = sum(m.count_params() for m in [*model.branches, model.fusion, *model.pretrained])
    assert model.count_params() == parts + 1  # + the epoch counter


def test_pretrained_copies_are_frozen_and_excluded_from_decay():
    config = tiny_config(method="ffcl", lr=0.1)
    model = model_for(config)
    compile_model(model, config, 4)
    frozen_ids = {id(v) for net in model.pretrained for v in net.weights}
    assert not frozen_ids & {id(v) for v in model.trainable_variables}
    decayed = {id(v) for _, group in model.weight_decay_groups() for v in group}
    assert not frozen_ids & decayed
    before = [w.copy() for net in model.pretrained for w in net.get_weights()]
    x, y = random_batch(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = [w for net in model.pretrained for w in net.get_weights()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # BN statistics included


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(feature_knowledge=False, response_knowledge=False, regularization_knowledge=False), "use --method=vanilla"),
        (dict(topology="shared"), "does not support --topology=shared"),
        (dict(fusion="average"), "--method=ffcl has no setting fusion"),  # FFL's ablation, not FFCL's
        (dict(regularization_knowledge=False, pretrained_dir="/somewhere"), "only used with --ffcl_regularization_knowledge"),
        (dict(pretrained_dir="/nonexistent/run"), "no config.json"),
    ],
)
def test_invalid_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(method="ffcl", **overrides)


def test_pretrained_dir_is_only_for_ffcl():
    with pytest.raises(ConfigError, match="--method=dml has no setting pretrained_dir"):
        tiny_config(method="dml", pretrained_dir="/somewhere")


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    from keras_ffl.train import train

    config = tiny_config(method="ffcl", epochs=1, pretrain_epochs=2, validation_freq=0,
                         model_dir=str(tmp_path_factory.mktemp("ffcl") / "run"))
    return config, train(config)


def test_one_command_pretrains_then_trains_collaboratively(two_stage_run):
    from keras_ffl.config import Config
    from keras_ffl.evaluate import evaluate

    config, report = two_stage_run
    assert config.options.pretrained_dir == os.path.join(config.model_dir, "pretrain")
    stage = Config.load(os.path.join(config.options.pretrained_dir, "config.json"))
    assert (stage.method, stage.epochs, stage.backbones) == ("vanilla", 2, config.backbones)
    pretrained = json.load(open(os.path.join(config.options.pretrained_dir, "report.json")))["results"]
    # The frozen copies are the pre-trained networks: same accuracy on the same test images.
    for k in range(2):
        assert report["results"][f"pretrained{k}"]["top1"] == pytest.approx(pretrained[f"net{k}"]["top1"], abs=1e-6)
    assert list(report["results"]) == ["net0", "net1", "S-avg", "ensemble", "fused", "pretrained0", "pretrained1"]
    rows, _, _ = evaluate(config.model_dir)
    for part, row in report["results"].items():
        assert rows[part]["top1"] == pytest.approx(row["top1"], abs=1e-6)


def test_given_pretrained_dir_skips_the_stage_and_must_match(two_stage_run, tmp_path):
    from keras_ffl.train import train

    config, first = two_stage_run
    reuse = replace(config, model_dir=str(tmp_path / "reuse"), pretrained_dir=config.options.pretrained_dir, epochs=1)
    report = train(reuse)
    assert not os.path.exists(tmp_path / "reuse" / "pretrain")
    assert report["results"]["pretrained1"] == first["results"]["pretrained1"]
    with pytest.raises(ConfigError, match="networks are resnet8, wrn10_1"):
        replace(config, backbones=("resnet8", "wrn10_1"), model_dir=str(tmp_path / "other"),
                pretrained_dir=config.options.pretrained_dir)
