"""Grad-CAM finds the region that drives a class in a network built so the answer is known;
feature-map similarity matches its definition; both CLIs run on the committed zoo models."""

import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_starts_quietly, run_cli
from keras_ffl.analyze import explainers, feature_similarity, gradcam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_patch_network(images):
    """Channel c of the image is feature channel c, and feature channel c alone drives class c."""
    feature_map = tf.nn.relu(images)
    logits = tf.reduce_mean(feature_map, axis=(1, 2)) @ tf.eye(2)
    return logits, feature_map


def test_gradcam_highlights_the_patch_that_drives_the_explained_class():
    image = np.zeros((1, 16, 16, 2), np.float32)
    image[0, 1:5, 1:5, 0] = 1.0  # class-0 evidence, top left
    image[0, 10:15, 10:15, 1] = 2.0  # class-1 evidence, bottom right (stronger: the prediction)
    cams, predicted = gradcam(two_patch_network, image)
    assert predicted.tolist() == [1]
    assert np.unravel_index(np.argmax(cams[0]), cams[0].shape)[0] >= 10
    cam0, chosen = gradcam(two_patch_network, image, classes=[0])
    assert chosen.tolist() == [0]
    row, col = np.unravel_index(np.argmax(cam0[0]), cam0[0].shape)
    assert row < 5 and col < 5
    assert cam0[0, 10:15, 10:15].max() == 0.0  # the other class's evidence is not highlighted
    assert cams.min() >= 0.0 and cams.max() == pytest.approx(1.0)


def test_explainers_cover_every_sub_network_and_the_fused_classifier():
    from helpers import random_batch, tiny_config
    from keras_ffl.build import build_model

    model = build_model(tiny_config(method="ffcl", backbones=("resnet8", "wrn10_1")), 10, (32, 32, 3))
    x, _ = random_batch(3)
    parts = explainers(model)
    assert list(parts) == ["net0", "net1", "fused"]
    logits, fused_map = parts["fused"](x)
    np.testing.assert_allclose(logits.numpy(), model(x)["fused"].numpy(), rtol=1e-5, atol=1e-6)
    assert fused_map.shape[1] == 16  # the middle-layer maps FFCL fuses
    cams, _ = gradcam(parts["net1"], x)
    assert cams.shape == (3, 32, 32)


def reference_similarity(a, b):
    """Per-image loops, written independently of the vectorised version."""
    l1, l2, cos = [], [], []
    for x, y in zip(a, b):
        x, y = x.ravel().astype(np.float64), y.ravel().astype(np.float64)
        l1.append(sum(abs(p - q) for p, q in zip(x, y)) / len(x))
        l2.append(sum((p - q) ** 2 for p, q in zip(x, y)) ** 0.5)
        cos.append(sum(p * q for p, q in zip(x, y)) / ((sum(p * p for p in x) * sum(q * q for q in y)) ** 0.5))
    return {"L1": np.mean(l1), "L2": np.mean(l2), "cosine": np.mean(cos)}


def test_feature_similarity_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4, 4, 3)), rng.normal(size=(5, 4, 4, 3))
    assert feature_similarity(a, b) == pytest.approx(reference_similarity(a, b), rel=1e-9)
    assert feature_similarity(a, a) == pytest.approx({"L1": 0.0, "L2": 0.0, "cosine": 1.0})
    assert feature_similarity(a, -2 * a)["cosine"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        feature_similarity(a, b[:, :2])


def test_cli_on_zoo_models(tmp_path, fashion_mnist_dir):
    png = tmp_path / "grid.png"
    result = run_cli("analyze", "gradcam", "--name=ffl_resnet8x2_fashion_mnist", "--baseline=vanilla_resnet8_fashion_mnist",
                     "--examples=4", f"--output={png}")
    assert result.returncode == 0, result.stderr
    assert "net0, net1, fused, vanilla net0" in result.stdout and png.read_bytes()[:4] == b"\x89PNG"
    result = run_cli("analyze", "similarity", "--name=dml_resnet8x2_fashion_mnist", "--examples=64")
    assert result.returncode == 0, result.stderr
    assert_starts_quietly(result)
    assert "| net0-net1 |" in result.stdout
    bad = run_cli("analyze", "nothing")
    assert bad.returncode == 2 and "usage: python -m keras_ffl.analyze" in bad.stderr
