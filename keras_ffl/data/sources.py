"""Where examples come from: local IDX files, tfds, or a generator.  Each source yields
``(uint8 image [H, W, C], int label)`` datasets, or ``(JPEG bytes, label, record name)`` for
datasets whose images the pipeline decodes (ImageNet); ``keras_ffl.data`` does the rest."""

import gzip
import os
import re
import struct

import numpy as np
import tensorflow as tf

from keras_ffl import specs
from keras_ffl.errors import DataError


def read_idx(path):
    """Reads an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST.  A file
    that ends early names the record it ends in."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated or corrupt: its header is incomplete")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        record_bytes = int(np.prod(dims[1:])) if ndim > 1 else 1
        where = (
            f"record {body.size // record_bytes} of {dims[0]} is incomplete"
            if body.size < expected
            else f"{body.size - expected} bytes follow the last of its {dims[0]} records"
        )
        raise DataError(f"{path} is truncated or corrupt: header says {expected} bytes, found {body.size} ({where})")
    return body.reshape(dims)


def fashion_mnist(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))[..., None]
    labels_path = os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")
    labels = read_idx(labels_path).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} split in {data_dir}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero(labels >= specs.DATASETS["fashion_mnist"].num_classes)
    if bad.size:
        raise DataError(f"{labels_path}: record {bad[0]} has label {labels[bad[0]]}, outside 0..9 (corrupt file)")
    return images, labels


def synthetic(num_examples, seed, split, num_classes=10, shape=(32, 32, 3)):
    """Class-conditional noise: each class has a fixed random template, so nets can learn it."""
    templates = np.random.default_rng(seed).uniform(0, 255, size=(num_classes, *shape))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, num_classes, size=num_examples)
    noise = rng.uniform(0, 255, size=(num_examples, *shape))
    images = np.clip(0.6 * templates[labels] + 0.4 * noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def tfds_split(name, split, data_dir, download, manual_dir=""):
    """A tfds split as ``(image, label)``, or ``(JPEG bytes, label, file name)`` for datasets
    whose images are decoded by the pipeline (ImageNet)."""
    import tensorflow_datasets as tfds

    spec = specs.DATASETS[name]
    kwargs = {}
    if manual_dir:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
        }
    kwargs.update(split=split, data_dir=data_dir or None, download=download, shuffle_files=False)
    try:
        if spec.encoded_images:
            ds = tfds.load(name, decoders={"image": tfds.decode.SkipDecoding()}, **kwargs)
            return ds.map(lambda ex: (ex["image"], ex["label"], ex["file_name"]))
        return tfds.load(name, as_supervised=True, **kwargs)
    except Exception as e:  # tfds raises many types (AssertionError, DatasetNotFoundError, IOError...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if download else " (prepare it with tfds, or pass --download)"
        if spec.encoded_images and not manual_dir:
            hint += "; ImageNet needs the ILSVRC2012 tars in --manual_dir"
        raise DataError(f"cannot load tfds dataset '{name}' split '{split}': {first_line}{hint}") from None


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


def load_split(dataset, split, data_dir, download, seed, num_examples, manual_dir=""):
    """Returns ``(tf.data.Dataset of examples, number of examples)``: ``(uint8 image, label)``
    or, for encoded-image datasets, ``(JPEG bytes, label, record name)``."""
    spec = specs.DATASETS[dataset]
    if spec.source == "idx":
        images, labels = fashion_mnist(data_dir, split)
    elif spec.source == "generated":
        default = 1024 if split == "train" else 256
        images, labels = synthetic(num_examples or default, seed, split, spec.num_classes, spec.image_shape)
    else:
        tfds_name = spec.test_split if split == "test" else split
        ds = tfds_split(dataset, tfds_name, data_dir, download, manual_dir)
        size = spec.train_size if split == "train" else spec.test_size
        cardinality = int(ds.cardinality())
        if cardinality > 0:
            size = cardinality
        if num_examples:
            ds, size = ds.take(num_examples), min(num_examples, size)
        return ds.map(lambda x, y, *name: (x, tf.cast(y, tf.int64), *name)), size
    if num_examples:
        images, labels = images[:num_examples], labels[:num_examples]
    return tf.data.Dataset.from_tensor_slices((images, labels)), len(labels)
