"""TensorFlow Datasets: CIFAR (when no python archive is given), imagenet2012 and the other
tfds sets.  Needs TensorFlow; imported only when such a dataset is used."""

import contextlib
import logging
import re

import numpy as np
import tensorflow as tf

from keras_ffl import specs
from keras_ffl.errors import DataError


def manual_dir_kwargs(manual_dir):
    """``tfds.load`` arguments that point its preparation at the files in ``manual_dir``."""
    import tensorflow_datasets as tfds

    if not manual_dir:
        return {}
    return {"download_and_prepare_kwargs": {"download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)}}


def label_feature(info):
    """The ``ClassLabel`` feature of a tfds dataset's info (its supervised label)."""
    return info.features[info.supervised_keys[1] if info.supervised_keys else "label"]


@contextlib.contextmanager
def log_shown_on_success():
    """tfds's log lines (through absl) held while a dataset loads, and shown only if it loads:
    a dataset that is not there gives the one error line alone."""
    logger = logging.getLogger("absl")
    held = []

    class Hold(logging.Filter):
        def filter(self, record):
            held.append(record)
            return False

    hold = Hold()
    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def tfds_split(name, split, data_dir, download, manual_dir=""):
    """A tfds split as ``(image, label)``, or ``(JPEG bytes, label, file name)`` for datasets
    whose images are decoded by the pipeline (ImageNet)."""
    import tensorflow_datasets as tfds

    spec = specs.DATASETS[name]
    kwargs = manual_dir_kwargs(manual_dir)
    kwargs.update(split=split, data_dir=data_dir or None, download=download, shuffle_files=False)
    try:
        with log_shown_on_success():
            if spec.encoded_images:
                ds = tfds.load(name, decoders={"image": tfds.decode.SkipDecoding()}, **kwargs)
                return ds.map(lambda ex: (ex["image"], ex["label"], ex["file_name"]))
            return tfds.load(name, as_supervised=True, **kwargs)
    except Exception as e:  # tfds raises many types (AssertionError, DatasetNotFoundError, IOError...)
        hint = "; ImageNet needs the ILSVRC2012 tars in --manual_dir" if spec.encoded_images and not manual_dir else ""
        raise load_failure(name, split, e, download, hint) from None


def load_failure(name, split, error, download, hint=""):
    """The one-line DataError for a tfds dataset that does not load."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not download:
        hint = " (prepare it with tfds, or pass --download)" + hint
    return DataError(f"cannot load tfds dataset '{name}' split '{split}': {first_line}{hint}")


def tfds_record_files(name, data_dir):
    """The prepared record files of every split of a tfds dataset ([] when unknown)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        return [str(p) for split in builder.info.splits.values() for p in split.filepaths]
    except Exception:  # noqa: BLE001 - only a diagnosis: no files means no file is named
        return []


def find_corrupt_tfrecord(paths):
    """Reads each TFRecord file through; the first that fails its checksum, as
    "corrupt TFRecord <file> (corrupted record at <byte offset>)", or None."""
    for path in paths:
        try:
            tf.data.TFRecordDataset(path).reduce(0, lambda count, _: count + 1)
        except tf.errors.DataLossError as e:
            offset = re.search(r"corrupted record at \d+", str(e.message))
            return f"corrupt TFRecord {path} ({offset[0] if offset else 'unreadable'})"
    return None


def tfds_arrays(dataset, split, data_dir, download, num_examples, manual_dir=""):
    """A small tfds split read into memory: ``(uint8 images, int64 labels)``."""
    ds = tfds_split(dataset, split, data_dir, download, manual_dir)
    if num_examples:
        ds = ds.take(num_examples)
    images, labels = [], []
    for image_batch, label_batch in ds.batch(4096).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch.astype(np.int64))
    if not images:
        raise DataError(f"tfds dataset '{dataset}' split '{split}' is empty")
    return np.concatenate(images), np.concatenate(labels)


def streamed_split(dataset, split, data_dir, download, num_examples, manual_dir=""):
    """A large tfds split as a stream of ``(JPEG bytes, label, record name)`` and its size."""
    spec = specs.DATASETS[dataset]
    ds = tfds_split(dataset, spec.test_split if split == "test" else split, data_dir, download, manual_dir)
    size = spec.train_size if split == "train" else spec.test_size
    cardinality = int(ds.cardinality())
    if cardinality > 0:
        size = cardinality
    if num_examples:
        ds, size = ds.take(num_examples), min(num_examples, size)
    return ds.map(lambda x, y, *name: (x, tf.cast(y, tf.int64), *name)), size


def image_dataset(name, split, data_dir, download, manual_dir, num_examples, image_size, train):
    """Any tfds image-classification split in memory, brought to the stored size as a folder's
    images are: ``(uint8 images [N, S, S, 3], int64 labels)``; ``class_names`` gives the names."""
    import tensorflow_datasets as tfds

    from keras_ffl.data.folder import fit_arrays

    try:
        with log_shown_on_success():
            ds, info = tfds.load(name, split=split, as_supervised=True, with_info=True, data_dir=data_dir or None,
                                 download=download, shuffle_files=False, **manual_dir_kwargs(manual_dir))
    except Exception as e:  # tfds raises many types
        raise load_failure(name, split, e, download) from None
    if not hasattr(label_feature(info), "names"):
        raise DataError(f"tfds dataset '{name}' has no class label to classify (its supervised keys are "
                        f"{info.supervised_keys})")
    if num_examples:
        ds = ds.take(num_examples)
    images, labels = [], []
    for image, target in ds.as_numpy_iterator():
        images.append(image)
        labels.append(int(target))
    if not images:
        raise DataError(f"tfds dataset '{name}' split '{split}' is empty")
    return fit_arrays(images, image_size, train), np.asarray(labels, np.int64)


def class_names(name, data_dir=""):
    """The class names of a tfds image-classification dataset (from its builder's info)."""
    import tensorflow_datasets as tfds

    return tuple(str(n) for n in label_feature(tfds.builder(name, data_dir=data_dir or None).info).names)
