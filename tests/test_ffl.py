"""FFL: its loss against numpy, its weight decay, ablations, K >= 2 and mixed architectures."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from helpers import model_for, random_batch, tiny_config
from keras_ffl.backbones import get_backbone
from keras_ffl.build import compile_model
from keras_ffl.methods import FFL

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "golden_losses.json")))


def fake_outputs(logits, fused):
    logits = [tf.constant(z, tf.float32) for z in logits]
    return {"logits": logits, "ensemble": tf.reduce_mean(tf.stack(logits), 0), "teachers": {"fused": tf.constant(fused, tf.float32)}}


@pytest.mark.parametrize("case", range(len(GOLDEN["ffl"])))
def test_loss_equals_golden_fixture(case):
    c = GOLDEN["ffl"][case]
    k, classes = len(c["logits"]), len(c["fused"][0])
    model = model_for(tiny_config(num_branches=k, temperature=c["temperature"], rampup_epochs=c["rampup_epochs"]), classes)
    model.epoch.assign(float(c["epoch"]))
    terms = model.compute_losses(fake_outputs(c["logits"], c["fused"]), tf.constant(c["labels"]))
    assert {n: float(tf.reduce_mean(v)) for n, v in terms.items()} == pytest.approx(c["terms"], rel=1e-5)
    assert float(model.rampup()) == pytest.approx(c["rampup"], rel=1e-6)
    assert float(model.total_loss(terms)) == pytest.approx(c["total"], rel=1e-5)


def test_loss_on_the_model_own_forward_pass_equals_numpy():
    config = tiny_config(num_branches=3, rampup_epochs=80)
    model = model_for(config)
    model.epoch.assign(25.0)
    x, y = random_batch()
    outputs = model.forward(x, training=False)
    terms = model.compute_losses(outputs, y)
    logits = [z.numpy() for z in outputs["logits"]]
    expected = ref.ffl_total(logits, outputs["teachers"]["fused"].numpy(), y, 3.0, 25, 80)
    assert float(model.total_loss(terms)) == pytest.approx(expected, rel=1e-5)
    assert np.allclose(outputs["ensemble"].numpy(), np.mean(logits, axis=0), atol=1e-6)


@pytest.mark.parametrize(
    "ensemble_kd,fusion_kd,expected",
    [(True, True, ["ce_net0", "ce_net1", "ce_fused", "kd_fused", "kd_net0", "kd_net1"]),
     (False, True, ["ce_net0", "ce_net1", "ce_fused", "kd_net0", "kd_net1"]),
     (False, False, ["ce_net0", "ce_net1", "ce_fused"])],
)
def test_ablation_switches_select_terms(ensemble_kd, fusion_kd, expected):
    c = GOLDEN["ffl"][0]
    model = model_for(tiny_config(ensemble_kd=ensemble_kd, fusion_kd=fusion_kd))
    terms = model.compute_losses(fake_outputs(c["logits"], c["fused"]), tf.constant(c["labels"]))
    assert list(terms) == expected
    reference = ref.ffl_terms([np.array(z) for z in c["logits"]], np.array(c["fused"]), np.array(c["labels"]), 3.0,
                              ensemble_kd=ensemble_kd, fusion_kd=fusion_kd)
    assert {n: float(tf.reduce_mean(v)) for n, v in terms.items()} == pytest.approx(reference, rel=1e-5)


def test_fusion_losses_train_the_subnetworks():
    """Feature maps enter the fusion module undetached: CE(z_f) reaches the trunk and branches."""
    model = model_for(tiny_config())
    x, y = random_batch()
    with tf.GradientTape() as tape:
        terms = model.compute_losses(model.forward(x, training=True), y)
        loss = tf.reduce_mean(terms["ce_fused"])
    branch_var = model.branches[0].get_layer("stage3_block0_conv1").kernel
    trunk_var = model.trunk.get_layer("stem_conv").kernel
    grads = tape.gradient(loss, [branch_var, trunk_var])
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_weight_decay_is_pytorch_l2_with_a_separate_fusion_rate():
    model = model_for(tiny_config(weight_decay=1e-4, fusion_weight_decay=1e-5))
    fusion_ids = {id(v) for v in model.fusion.trainable_variables}
    variables = model.trainable_variables
    (update,), = model.update_plan()  # one phase, one update: every term, every variable
    with tf.GradientTape() as tape:
        penalty = model.l2_penalty(update.gradients[0].decay)
    grads = tape.gradient(penalty, variables)
    for v, g in zip(variables, grads):
        decay = 1e-5 if id(v) in fusion_ids else 1e-4
        np.testing.assert_allclose(g.numpy(), decay * v.numpy(), rtol=1e-5, atol=1e-12)
    # BN gammas/betas and biases decay too, as in PyTorch's SGD weight_decay.
    names = {v.path for v in variables}
    assert any("gamma" in n for n in names) and any("bias" in n for n in names)
    expected = sum(0.5 * (1e-5 if id(v) in fusion_ids else 1e-4) * np.sum(v.numpy() ** 2) for v in variables)
    assert float(penalty) == pytest.approx(expected, rel=1e-5)


def test_fusion_module_structure_and_default_channels():
    model = model_for(tiny_config(backbones=("resnet8", "wrn10_2")))
    fusion = model.fusion
    assert fusion.depthwise.kernel.shape == (3, 3, 64 + 128, 1)
    assert fusion.pointwise.kernel.shape == (1, 1, 64 + 128, 64)  # N = min(C_k)
    assert fusion.depthwise.use_bias is False and fusion.pointwise.use_bias is False
    assert fusion.classifier.kernel.shape == (64, 10)


def test_feature_averaging_ablation_and_its_limits():
    model = model_for(tiny_config(fusion="average"))
    assert not hasattr(model.fusion, "depthwise")
    assert model.fusion.classifier.kernel.shape == (64, 10)
    from keras_ffl.config import ConfigError

    with pytest.raises(ConfigError, match="average needs equal feature channels"):
        tiny_config(fusion="average", backbones=("resnet8", "wrn10_2"))


def test_three_branches_and_independent_heterogeneous_networks_train():
    for config in (tiny_config(num_branches=3), tiny_config(backbones=("resnet8", "wrn10_2"))):
        model = model_for(config)
        compile_model(model, config, 4)
        x, y = random_batch(16)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert set(model.part_names) >= {"net0", "net1", "ensemble", "fused"}
    assert config.topology == "independent" and model.trunk is None


def byo_network(classes):
    """A bring-your-own sub-network whose last feature map is 16x16 (ResNet-8's is 8x8)."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(inputs)
    logits = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, [logits, x], name="byo")


def test_different_spatial_sizes_go_through_an_adapter():
    keras.utils.set_random_seed(0)
    nets = [get_backbone("resnet8").build_network((32, 32, 3), 10, "net0"), byo_network(10)]
    model = FFL(nets, 10)
    x, y = random_batch(8)
    out = model(x)
    assert list(model.fusion.adapters) == ["1"]
    assert model.fusion.adapters["1"].conv.strides == (2, 2)
    assert out["fused"].shape == (8, 10)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_a_few_steps_lower_the_training_loss():
    config = tiny_config(train_examples=64, lr=0.05)
    model = model_for(config)
    compile_model(model, config, 4)
    x, y = random_batch(32, seed=3)
    first = float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    model.fit(x, y, batch_size=16, epochs=10, verbose=0)  # 20 steps: 0.59 of the first loss measured
    last = float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    assert last < 0.8 * first


def test_config_round_trip_rebuilds_the_same_model():
    model = model_for(tiny_config(num_branches=3))
    clone = FFL.from_config(model.get_config())
    x, _ = random_batch(2)
    clone(x)
    assert clone.count_params() == model.count_params()
    assert clone.fusion_channels == model.fusion_channels and clone.num_branches == 3


