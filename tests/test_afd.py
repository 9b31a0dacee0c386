"""AFD: losses against numpy, the two optimisers and what each may touch, checkpointed state."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import numpy_reference as ref
from helpers import compiled_model_for, random_batch, tiny_config
from keras_ffl.config import ConfigError

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "golden_losses.json")))["ffl"]


def afd_model(**overrides):
    config = tiny_config(method="afd", **overrides)
    return compiled_model_for(config), config


@pytest.mark.parametrize("mode", ["full", "adversarial", "kd", "l1", "l1_kd"])
@pytest.mark.parametrize("case", [0, 1])
def test_losses_equal_numpy(mode, case):
    c = GOLDEN[case]
    k = len(c["logits"])
    rng = np.random.default_rng(case)
    model, _ = afd_model(afd_mode=mode, num_branches=k)
    batch = len(c["labels"])
    d_fake = [rng.uniform(size=batch) for _ in range(k)]
    d_real = [rng.uniform(size=batch) for _ in range(k)]
    maps = [rng.normal(size=(batch, 2, 2, 3)) for _ in range(k)]
    logits = [np.array(z)[:, :10] for z in c["logits"]]
    outputs = {
        "logits": [tf.constant(z, tf.float32) for z in logits],
        "d_fake": [tf.constant(d, tf.float32) for d in d_fake],
        "d_real": [tf.constant(d, tf.float32) for d in d_real],
        "transferred": [tf.constant(m, tf.float32) for m in maps],
    }
    labels = np.array(c["labels"]) % 10
    terms = model.compute_losses(outputs, tf.constant(labels))
    expected = ref.afd_terms(logits, labels, 3.0, d_fake, d_real, maps, mode)
    assert {n: float(tf.reduce_mean(v)) for n, v in terms.items()} == pytest.approx(expected, rel=1e-5)


def test_discriminator_layout_and_transfer_layers():
    model, _ = afd_model(backbones=("resnet8", "wrn10_2"))
    assert model.transfers[0] is None and model.transfers[1].channels == 64
    x, _ = random_batch(4)
    outputs = model.forward(x, training=False)
    for d in outputs["d_fake"] + outputs["d_real"]:
        assert d.shape == (4,) and float(tf.reduce_min(d)) >= 0.0 and float(tf.reduce_max(d)) <= 1.0
    disc = model.discriminators[0]
    assert disc.conv1.strides == (2, 2) and disc.conv1.filters == 32 and disc.conv2.kernel_size == (4, 4)
    classifier = model.branches[0].get_layer("classifier").kernel
    extractors, discriminators = model.feature_variables()
    assert all(v is not classifier for v in extractors)  # the classifier is not a feature extractor
    assert {id(v) for v in discriminators}.isdisjoint(id(v) for v in model.network_variables())


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


def changed(before, variables):
    return [not np.allclose(b, v.numpy()) for b, v in zip(before, variables)]


def test_each_optimiser_touches_only_its_own_variables():
    model, _ = afd_model()
    x, y = random_batch(8)
    data = (tf.constant(x), tf.constant(y))
    classifier = [model.branches[k].get_layer("classifier") for k in range(2)]
    classifier_vars = [v for layer in classifier for v in layer.trainable_variables]
    extractors, discriminators = model.feature_variables()

    # SGD frozen: only Adam moves things, and never the classifiers.
    model.compile(optimizer=keras.optimizers.SGD(0.0), feature_optimizer=keras.optimizers.Adam(1e-3))
    before = snapshot(classifier_vars + extractors + discriminators)
    model.train_step(data)
    moved = changed(before, classifier_vars + extractors + discriminators)
    n_cls, n_ext = len(classifier_vars), len(extractors)
    assert not any(moved[:n_cls])
    assert sum(moved[n_cls:n_cls + n_ext]) > n_ext // 2 and all(moved[n_cls + n_ext:])

    # Adam frozen: SGD moves the networks (classifiers too) and never the discriminators.
    model.compile(optimizer=keras.optimizers.SGD(0.1), feature_optimizer=keras.optimizers.Adam(0.0))
    before = snapshot(classifier_vars + discriminators)
    model.train_step(data)
    moved = changed(before, classifier_vars + discriminators)
    assert all(moved[:n_cls]) and not any(moved[n_cls:])


def test_discriminator_gradient_never_reaches_the_networks():
    model, _ = afd_model()
    x, y = random_batch(8)
    extractors, _ = model.feature_variables()
    with tf.GradientTape() as tape:
        terms = model.compute_losses(model.forward(x, training=True), y)
        real_part = tf.reduce_mean(tf.square(1.0 - model.forward(x, training=True)["d_real"][0]))
    grads = tape.gradient(real_part, extractors, unconnected_gradients="none")
    assert all(g is None for g in grads)  # the peer's map reaches D detached
    assert "adv_d0" in terms


def test_both_optimisers_are_checkpointed(tmp_path):
    model, config = afd_model()
    x, y = random_batch(8)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    features = model.optimizer_for("features")
    assert int(features.iterations.numpy()) == 3 and int(model.optimizer_for("networks").iterations.numpy()) == 3
    assert int(model.optimizer.iterations.numpy()) == 3  # the group counts training steps
    path = str(tmp_path / "afd.weights.h5")
    model.save_weights(path)
    fresh, _ = afd_model()
    fresh.load_weights(path)
    assert int(fresh.optimizer_for("features").iterations.numpy()) == 3
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):  # every member's state
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_feature_schedule_is_the_paper_one():
    model, _ = afd_model(feature_lr=2e-5, feature_lr_milestones=(75, 150), epochs=300)
    schedule = model.optimizer_for("features")._learning_rate
    steps = 4  # tiny_config: 64 examples, batch 16
    assert float(schedule(0)) == pytest.approx(2e-5)
    assert float(schedule(75 * steps - 1)) == pytest.approx(2e-5)  # last step of epoch 74
    assert float(schedule(75 * steps)) == pytest.approx(2e-6)  # first step of epoch 75
    assert float(schedule(150 * steps)) == pytest.approx(2e-7)


def test_afd_needs_independent_networks_of_one_spatial_size():
    with pytest.raises(ConfigError, match="does not support --topology=shared"):
        tiny_config(method="afd", topology="shared")
