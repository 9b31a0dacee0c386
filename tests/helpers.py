"""Small builders shared by the tests."""

import dataclasses

import h5py

import numpy as np

from keras_ffl.config import Config


def tiny_config(**overrides):
    """A validated Config on synthetic data with ResNet-8 branches: fast on 2 cores."""
    base = dict(
        dataset="synthetic",
        backbones=("resnet8",),
        num_branches=2,
        train_examples=64,
        test_examples=32,
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
        lr_milestones=(),
        rampup_epochs=0,
        verbose=0,
    )
    base.update(overrides)
    return Config(**base).validated()


def replace(config, **changes):
    return dataclasses.replace(config, **changes).validated()


def random_batch(batch=8, shape=(32, 32, 3), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, *shape)).astype("float32"), rng.integers(0, classes, batch).astype("int64")


def read_weights(path):
    """Every array of a ``.weights.h5`` file, by its path inside the file."""
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: values.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return values


def train_until_interrupted(config, after_epoch=1):
    """Trains ``config`` and interrupts it (KeyboardInterrupt) at the end of ``after_epoch``,
    as Ctrl-C would: the run's directory holds what the callbacks wrote up to then."""
    import keras
    import pytest

    from keras_ffl.train import train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == after_epoch:
                raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[Interrupt()])
