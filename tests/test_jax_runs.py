"""The checks that must run inside a JAX process (``tests/jax_backend/``: every method's losses
against numpy, AFD's two optimisers, kill -9 on JAX...) and a real run trained on JAX then
evaluated under TensorFlow.  Apart from ``test_backends.py`` so that the two halves run on
different workers of the suite."""

import json
import os
import subprocess
import sys

import pytest

from test_backends import HERE, jax_env

from conftest import REPO
from helpers import assert_starts_quietly


def test_jax_losses_and_optimisers():
    jax_suite("test_jax_methods.py")


def jax_suite(name, devices=1):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join(HERE, "jax_backend", name)], env=jax_env(devices), cwd=REPO,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_a_run_trained_on_jax_learns_and_evaluates_the_same_under_tensorflow(tmp_path, fashion_mnist_dir):
    """The quickstart on real Fashion-MNIST under JAX, then its weights under TensorFlow."""
    from keras_ffl.evaluate import evaluate

    model_dir = tmp_path / "jax_run"
    result = subprocess.run([sys.executable, "-m", "keras_ffl.train", "--flagfile=quickstart_fashion_mnist",
                             "--backend=jax", "--train_examples=4000", "--test_examples=1000", "--epochs=2",
                             "--lr_milestones=1", "--rampup_epochs=1", "--batch_size=64", "--eval_batch_size=250",
                             "--validation_freq=0", "--verbose=0", f"--model_dir={model_dir}"],
                            env=jax_env(), cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Keras on jax" in result.stdout
    assert_starts_quietly(result)  # TensorFlow, imported for the data, held back too
    report = json.loads((model_dir / "report.json").read_text())
    assert report["backend"] == "jax" and report["config"]["backend"] == "jax"
    # Learned, not merely ran: chance is 10%.  Two epochs of 63 steps end anywhere in 58-73%
    # (seeds 0-3 on JAX, one AVX-512 CPU; TensorFlow 70.4 at seed 0) and 53.5 was seen on
    # another CPU: the first epoch at lr 0.1 is still far from settled.  The semantics of the
    # JAX step are held exactly by test_cross_backend.py; this holds the whole run.
    for part in ("net0", "net1", "ensemble", "fused"):
        assert report["results"][part]["top1"] > 40.0, (part, report["results"][part])
    rows, _, test_size = evaluate(str(model_dir))  # in this process: TensorFlow
    assert test_size == 1000
    for part, row in report["results"].items():
        # Other convolution kernels may flip the prediction of an image on a decision boundary.
        assert rows[part]["top1"] == pytest.approx(row["top1"], abs=100 / test_size + 1e-6), part
