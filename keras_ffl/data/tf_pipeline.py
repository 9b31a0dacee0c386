"""tf.data pipelines, for the TensorFlow backend and for streamed data.

In-memory datasets are the NumPy stream (``keras_ffl.data.stream``) inside tf.data: a
dataset of example positions, batched, each batch assembled by ``EpochBatches.batch`` through
``tf.numpy_function``.  The batches are the ones every other backend sees, bit for bit; the
position dataset is what ``tf.distribute`` splits, so a global batch is divided between
replicas and workers without changing it.

Streamed datasets (imagenet2012) are read from tfds records, shuffled in stateless windows
and decoded per image (``keras_ffl.data.imagenet``); every random draw is keyed by the seed,
the epoch and the example's position in the epoch.
"""

import contextlib

import numpy as np
import tensorflow as tf

from keras_ffl.data.imagenet import CORRUPT_RECORD, evaluation_example, training_example
from keras_ffl.errors import DataError

#: An upper bound on epochs that keeps the endless stream's epoch counter finite.
MAX_EPOCHS = 1 << 31


def fold(seed, value):
    """A new stateless seed derived from ``seed`` ([2] int64) and an integer."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))


def seed_of_epoch(seed, epoch):
    """The stateless seed every random draw of one epoch is derived from."""
    return fold(tf.constant([seed, 0], tf.int64), epoch)


def batch_signature(batches, batch_size):
    """The dtypes and shapes of ``EpochBatches.batch``'s output, flattened."""
    inputs, labels = batches.batch(0, np.arange(min(batch_size, batches.size)))
    flat = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    keys = list(inputs) if isinstance(inputs, dict) else None
    return keys, [tf.as_dtype(a.dtype) for a in flat + [labels]], [(None, *a.shape[1:]) for a in flat + [labels]]


def numpy_batches_dataset(batches, epoch, positions, keys, dtypes, shapes):
    """Maps a dataset of position batches to ``EpochBatches.batch`` outputs for ``epoch``."""

    def assemble(epoch_value, position_values):
        inputs, labels = batches.batch(int(epoch_value), position_values)
        flat = [inputs[k] for k in keys] if keys else [inputs]
        return [*flat, labels]

    def to_batch(position_batch):
        values = tf.numpy_function(assemble, [epoch, position_batch], dtypes, stateful=False)
        for value, shape in zip(values, shapes):
            value.set_shape(shape)
        inputs = dict(zip(keys, values[:-1])) if keys else values[0]
        return inputs, values[-1]

    return positions.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)


def in_memory_training(batches, batch_size, steps_per_epoch):
    """``start_epoch -> endless tf.data stream`` of an in-memory dataset's training batches."""
    keys, dtypes, shapes = batch_signature(batches, batch_size)

    def one_epoch(epoch):
        positions = tf.data.Dataset.range(batches.size).batch(batch_size).take(steps_per_epoch)
        return numpy_batches_dataset(batches, epoch, positions, keys, dtypes, shapes)

    def train_from(start_epoch=0):
        return tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)

    return train_from


def in_memory_evaluation(batches, batch_size):
    """Every example once, in order, unaugmented (``EpochBatches`` built with ``shuffle=False``
    and no recipe)."""
    keys, dtypes, shapes = batch_signature(batches, batch_size)
    positions = tf.data.Dataset.range(batches.size).batch(batch_size)
    return numpy_batches_dataset(batches, 0, positions, keys, dtypes, shapes).prefetch(tf.data.AUTOTUNE)


def normalize(images, mean, std):
    """float pixels [0, 255] -> float32 standardised per channel (streamed data)."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def window_shuffle(ds, window, seed):
    """Shuffles a streamed dataset window by window (each window of ``window`` consecutive
    elements gets its own stateless permutation): ``shuffle``'s buffer without the hidden
    state that would make a resumed epoch differ."""

    def permute(index, elements):
        n = tf.shape(tf.nest.flatten(elements)[0])[0]
        order = tf.argsort(tf.random.stateless_uniform([n], fold(seed, index)))
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda t: tf.gather(t, order), elements))

    return ds.batch(window).enumerate().flat_map(permute)


def streamed_training(raw, batch_size, steps_per_epoch, mean, std, seed, augment, window, image_size):
    """``start_epoch -> endless stream`` of a streamed dataset of ``(JPEG bytes, label, name)``."""

    def one_epoch(epoch):
        epoch_seed = seed_of_epoch(seed, epoch)
        example_seed = fold(epoch_seed, 1)
        ds = window_shuffle(raw, window, fold(epoch_seed, 0)).enumerate()
        ds = ds.map(
            lambda i, example: training_example(*example, seed=fold(example_seed, i), size=image_size, augment=augment),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(batch_size).take(steps_per_epoch)

    def train_from(start_epoch=0):
        ds = tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(one_epoch)
        ds = ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    return train_from


def streamed_evaluation(raw, batch_size, mean, std, image_size):
    ds = raw.map(lambda *example: evaluation_example(*example, size=image_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    return ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


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
            from keras_ffl.data.tfds import find_corrupt_tfrecord, tfds_record_files

            found = None
            if config.dataset_spec.source in ("tfds", "cifar"):
                found = find_corrupt_tfrecord(tfds_record_files(config.dataset, config.data_dir))
            where = found or f"corrupt data in {config.dataset}: {message[-200:]}"
        else:
            raise
        raise DataError(f"{where}; the last checkpoint in {config.model_dir} is intact") from None
