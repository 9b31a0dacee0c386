"""A dataset is a name resolved to batched tf.data pipelines for training and testing.

``fashion_mnist`` reads Debian's IDX files; ``cifar10``/``cifar100`` and ``imagenet2012``
come from tfds; ``synthetic`` is generated in memory for tests.  Normalisation statistics
are those of the FFL code for CIFAR, torchvision's for ImageNet and the training split's
for Fashion-MNIST.

The training stream is a pure function of ``(seed, epoch)``: every random choice (shuffle
order, crops, flips) comes from stateless ops keyed by the seed, the epoch and the
position in the epoch, never from a random generator's hidden state.  So a run that is
killed and resumed at epoch k sees exactly the batches the uninterrupted run saw, and
``train_from(k)`` starts that stream at any epoch.  The stream is endless: ``fit`` draws
``steps_per_epoch`` batches per epoch, which is exactly one epoch of the stream.
"""

import contextlib
import dataclasses
import math
from typing import Callable

import tensorflow as tf

from keras_ffl.data.augment import normalize, pad_crop_flip
from keras_ffl.data.imagenet import CORRUPT_RECORD, evaluation_example, training_example
from keras_ffl.data.sources import DataError, find_corrupt_tfrecord, load_split, tfds_record_files

# (mean, std) per channel.
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

#: An upper bound on epochs that keeps the endless stream's epoch counter finite.
MAX_EPOCHS = 1 << 31


@dataclasses.dataclass
class Data:
    train_from: Callable  # start epoch -> endless tf.data stream of training batches
    test: tf.data.Dataset
    num_classes: int
    image_shape: tuple
    train_size: int
    test_size: int
    steps_per_epoch: int
    mean: tuple
    std: tuple

    @property
    def train(self):
        """The training stream from epoch 0."""
        return self.train_from(0)


def fold(seed, value):
    """A new stateless seed derived from ``seed`` ([2] int64) and an integer."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))


def seed_of_epoch(seed, epoch):
    """The stateless seed every random draw of one epoch is derived from."""
    return fold(tf.constant([seed, 0], tf.int64), epoch)


def window_shuffle(ds, window, seed):
    """Shuffles a streamed dataset window by window (each window of ``window`` consecutive
    elements gets its own stateless permutation): ``shuffle``'s buffer without the hidden
    state that would make a resumed epoch differ."""

    def permute(index, elements):
        n = tf.shape(tf.nest.flatten(elements)[0])[0]
        order = tf.argsort(tf.random.stateless_uniform([n], fold(seed, index)))
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda t: tf.gather(t, order), elements))

    return ds.batch(window).enumerate().flat_map(permute)


def training_pipeline(raw, *, size, batch_size, steps_per_epoch, mean, std, seed, augment, window=0,
                      image_size=None):
    """Returns ``start_epoch -> endless stream of normalised training batches``.

    ``raw`` yields ``(uint8 image, label)``, or ``(encoded image, label, record name)`` for
    ImageNet-style data (``image_size`` set: decode, random resized crop and flip per image).
    Every random draw is keyed by the seed, the epoch and the example's *position* in the
    epoch, never by a batch index: tf.distribute may rewrite the pipeline's batch size
    (multi-worker rebatching), and the examples and their augmentation must not change.
    Data that fits in memory (``window`` 0) is held as tensors and shuffled uniformly by a
    per-epoch permutation; streamed data (ImageNet) is shuffled in windows.
    """
    if window:
        return streamed_training_pipeline(raw, batch_size, steps_per_epoch, mean, std, seed, augment, window,
                                          image_size)
    images, labels = next(iter(raw.batch(max(size, 1))))  # held in memory (the source was, or is small)

    def one_epoch(epoch):
        epoch_seed = seed_of_epoch(seed, epoch)
        order = tf.argsort(tf.random.stateless_uniform([size], fold(epoch_seed, 0)))
        draws = tf.random.stateless_uniform([size, 3], fold(epoch_seed, 2))

        def gather(positions):
            index = tf.gather(order, positions)
            batch = tf.gather(images, index)
            if augment:
                batch = pad_crop_flip(batch, tf.gather(draws, positions))
            return batch, tf.gather(labels, index)

        positions = tf.data.Dataset.range(size).batch(batch_size)
        return positions.map(gather, num_parallel_calls=tf.data.AUTOTUNE).take(steps_per_epoch)

    return endless(one_epoch, mean, std)


def streamed_training_pipeline(raw, batch_size, steps_per_epoch, mean, std, seed, augment, window, image_size):
    def one_epoch(epoch):
        epoch_seed = seed_of_epoch(seed, epoch)
        example_seed = fold(epoch_seed, 1)
        ds = window_shuffle(raw, window, fold(epoch_seed, 0)).enumerate()
        ds = ds.map(
            lambda i, example: training_example(*example, seed=fold(example_seed, i), size=image_size, augment=augment),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(batch_size).take(steps_per_epoch)

    return endless(one_epoch, mean, std)


def endless(one_epoch, mean, std):
    def train_from(start_epoch=0):
        ds = tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(one_epoch)
        ds = ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    return train_from


def evaluation_pipeline(ds, batch_size, mean, std, cache=True, image_size=None):
    if image_size:
        ds = ds.map(lambda *example: evaluation_example(*example, size=image_size),
                    num_parallel_calls=tf.data.AUTOTUNE)
    elif cache:
        ds = ds.cache()
    ds = ds.batch(batch_size)
    return ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def load_data(config, splits=("train", "test")):
    """Builds the pipelines for a validated ``Config``; raises DataError on unreadable data."""
    spec = config.dataset_spec
    mean, std = NORMALIZATION[config.dataset]
    args = dict(dataset=config.dataset, data_dir=config.resolved_data_dir, download=config.download, seed=config.seed,
                manual_dir=config.manual_dir)
    streamed = spec.shuffle_window > 0  # too large for memory: no cache, windowed shuffle
    image_size = spec.image_shape[0] if spec.encoded_images else None
    train_from = test = None
    train_size = test_size = 0
    if "train" in splits:
        raw, train_size = load_split(split="train", num_examples=config.train_examples, **args)
    steps = math.ceil(train_size / config.batch_size) if train_size else 0
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch) if steps else config.steps_per_epoch
    if "train" in splits:
        train_from = training_pipeline(
            raw, size=train_size, batch_size=config.batch_size, steps_per_epoch=steps, mean=mean, std=std,
            seed=config.seed, augment=config.augment, window=spec.shuffle_window, image_size=image_size,
        )
    if "test" in splits:
        raw, test_size = load_split(split="test", num_examples=config.test_examples, **args)
        test = evaluation_pipeline(raw, config.eval_batch_size, mean, std, cache=not streamed, image_size=image_size)
    return Data(train_from, test, spec.num_classes, spec.image_shape, train_size, test_size, steps, mean, std)


@contextlib.contextmanager
def corrupt_records_named(config):
    """Turns a corrupt record met mid-run into a one-line DataError that names it: an image
    that is not a whole JPEG (the pipeline names its record), or a TFRecord that fails its
    checksum (TensorFlow names only the offset, so the dataset's files are scanned for it).
    The checkpoints stay as they were."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        message = " ".join(str(e.message).split())
        if CORRUPT_RECORD in message:
            # TensorFlow's text: "assertion failed: [corrupt image record: NAME (...)] [[{{node ...}}]]".
            where = message[message.index(CORRUPT_RECORD):].split("]")[0]
        elif isinstance(e, tf.errors.DataLossError):
            found = None
            if config.dataset_spec.source == "tfds":
                found = find_corrupt_tfrecord(tfds_record_files(config.dataset, config.data_dir))
            where = found or f"corrupt data in {config.dataset}: {message[-200:]}"
        else:
            raise
        raise DataError(f"{where}; the last checkpoint in {config.model_dir} is intact") from None


__all__ = ["Data", "DataError", "corrupt_records_named", "load_data", "NORMALIZATION"]
