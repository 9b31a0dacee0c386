"""Test set-up.  The suite runs on TensorFlow with two logical CPU devices (for
MirroredStrategy), set before TensorFlow starts.  ``tests/jax_backend/`` runs in its own
processes under ``KERAS_BACKEND=jax`` (``test_backends.py`` starts them): a Keras process has
one backend."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "tensorflow":
    import tensorflow as tf  # noqa: E402

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    collect_ignore_glob = ["jax_backend/*"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


_tests_since_collection = 0


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Keras's global state back to a blank one after every test.  A full garbage collection
    costs seconds once a worker holds hundreds of finished models, so it runs every 25
    tests rather than after each."""
    import gc

    import keras

    global _tests_since_collection
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.backend.clear_session(free_memory=False)
    _tests_since_collection += 1
    if _tests_since_collection >= 25:
        _tests_since_collection = 0
        gc.collect()


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    if not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (the README's setup does it)")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A finished tiny run (the CE-only baseline, one ResNet-8) to teach offline KD."""
    from helpers import tiny_config
    from keras_ffl.methods import registry
    from keras_ffl.train import train

    model_dir = str(tmp_path_factory.mktemp("teacher") / "run")
    train(tiny_config(method=registry.baseline(), num_branches=1, lr=0.05, validation_freq=0, model_dir=model_dir))
    return model_dir
