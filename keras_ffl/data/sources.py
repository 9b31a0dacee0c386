"""Where examples come from: local IDX files, tfds, or a generator.  Each source yields
``(uint8 image [H, W, C], int label)`` datasets; ``keras_ffl.data`` does the rest."""

import gzip
import os
import struct

import numpy as np
import tensorflow as tf

from keras_ffl import specs
from keras_ffl.errors import DataError


def read_idx(path):
    """Reads an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise DataError(f"{path} is truncated or corrupt: header says {expected} bytes, found {body.size}")
    return body.reshape(dims)


def fashion_mnist(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))[..., None]
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} split in {data_dir}: {len(images)} images but {len(labels)} labels")
    return images, labels


def synthetic(num_examples, seed, split, num_classes=10, shape=(32, 32, 3)):
    """Class-conditional noise: each class has a fixed random template, so nets can learn it."""
    templates = np.random.default_rng(seed).uniform(0, 255, size=(num_classes, *shape))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, num_classes, size=num_examples)
    noise = rng.uniform(0, 255, size=(num_examples, *shape))
    images = np.clip(0.6 * templates[labels] + 0.4 * noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def tfds_split(name, split, data_dir, download):
    import tensorflow_datasets as tfds

    try:
        return tfds.load(
            name,
            split=split,
            as_supervised=True,
            data_dir=data_dir or None,
            download=download,
            shuffle_files=False,
        )
    except Exception as e:  # tfds raises many types (AssertionError, DatasetNotFoundError, IOError...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if download else " (prepare it with tfds, or pass --download)"
        raise DataError(f"cannot load tfds dataset '{name}' split '{split}': {first_line}{hint}") from None


def load_split(dataset, split, data_dir, download, seed, num_examples):
    """Returns ``(tf.data.Dataset of (uint8 image, label), number of examples)``."""
    spec = specs.DATASETS[dataset]
    if spec.source == "idx":
        images, labels = fashion_mnist(data_dir, split)
    elif spec.source == "generated":
        default = 1024 if split == "train" else 256
        images, labels = synthetic(num_examples or default, seed, split, spec.num_classes, spec.image_shape)
    else:
        ds = tfds_split(dataset, split, data_dir, download)
        size = spec.train_size if split == "train" else spec.test_size
        cardinality = int(ds.cardinality())
        if cardinality > 0:
            size = cardinality
        if num_examples:
            ds, size = ds.take(num_examples), min(num_examples, size)
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int64))), size
    if num_examples:
        images, labels = images[:num_examples], labels[:num_examples]
    return tf.data.Dataset.from_tensor_slices((images, labels)), len(labels)
