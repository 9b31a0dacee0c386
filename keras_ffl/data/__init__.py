"""A dataset is a name resolved to batched tf.data pipelines for training and testing.

``fashion_mnist`` reads Debian's IDX files; ``cifar10``/``cifar100`` come from tfds;
``synthetic`` is generated in memory for tests.  Normalisation statistics are those of the
FFL code for CIFAR and of the training split for Fashion-MNIST.
"""

import dataclasses
import math

import tensorflow as tf

from keras_ffl.data.augment import normalize, pad_crop_flip
from keras_ffl.data.sources import DataError, load_split

# (mean, std) per channel.
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


@dataclasses.dataclass
class Data:
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    image_shape: tuple
    train_size: int
    test_size: int
    steps_per_epoch: int
    mean: tuple
    std: tuple


def training_pipeline(ds, size, batch_size, mean, std, seed, augment):
    ds = ds.cache().shuffle(min(size, 60000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (normalize(pad_crop_flip(batch[0], s), mean, std), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_pipeline(ds, batch_size, mean, std):
    ds = ds.cache().batch(batch_size)
    return ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def load_data(config, splits=("train", "test")):
    """Builds the pipelines for a validated ``Config``; raises DataError on unreadable data."""
    spec = config.dataset_spec
    mean, std = NORMALIZATION[config.dataset]
    args = dict(dataset=config.dataset, data_dir=config.resolved_data_dir, download=config.download, seed=config.seed)
    train = test = None
    train_size = test_size = 0
    if "train" in splits:
        raw, train_size = load_split(split="train", num_examples=config.train_examples, **args)
        train = training_pipeline(raw, train_size, config.batch_size, mean, std, config.seed, config.augment)
    if "test" in splits:
        raw, test_size = load_split(split="test", num_examples=config.test_examples, **args)
        test = evaluation_pipeline(raw, config.eval_batch_size, mean, std)
    steps = math.ceil(train_size / config.batch_size) if train_size else 0
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch) if steps else config.steps_per_epoch
    return Data(train, test, spec.num_classes, spec.image_shape, train_size, test_size, steps, mean, std)


__all__ = ["Data", "DataError", "load_data", "NORMALIZATION"]
