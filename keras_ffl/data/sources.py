"""Where in-memory examples come from, without TensorFlow: Fashion-MNIST's IDX files,
CIFAR's python-version archives, generated data.  Each returns ``(uint8 images [N, H, W, C],
int64 labels [N])``; tfds datasets are read by ``keras_ffl.data.tfds`` (TensorFlow needed)."""

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np

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


#: The python-version archives users download from https://www.cs.toronto.edu/~kriz/cifar.html:
#: archive name, folder inside it, training members, test member, label key.
CIFAR_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                "test_batch", b"labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], "test", b"fine_labels"),
}


def find_cifar_archive(dataset, data_dir):
    """The archive (``.tar.gz``) or its extracted folder in ``data_dir``, or None."""
    archive, folder = CIFAR_ARCHIVES[dataset][:2]
    for candidate in (os.path.join(data_dir, folder), os.path.join(data_dir, archive)):
        if data_dir and os.path.exists(candidate):
            return candidate
    return None


def cifar(dataset, data_dir, split):
    """One split of CIFAR-10/100 from its python-version archive (or the extracted folder)."""
    location = find_cifar_archive(dataset, data_dir)
    if location is None:
        archive, folder = CIFAR_ARCHIVES[dataset][:2]
        raise DataError(f"no {archive} (or its folder {folder}) in --data_dir {data_dir}")
    _, folder, train_members, test_member, label_key = CIFAR_ARCHIVES[dataset]
    members = train_members if split == "train" else [test_member]

    def read(member):
        try:
            if os.path.isdir(location):
                with open(os.path.join(location, member), "rb") as f:
                    return pickle.load(f, encoding="bytes")
            with tarfile.open(location, "r:gz") as tar:
                return pickle.load(io.BytesIO(tar.extractfile(f"{folder}/{member}").read()), encoding="bytes")
        except (OSError, EOFError, KeyError, pickle.UnpicklingError, tarfile.TarError, AttributeError) as e:
            raise DataError(f"cannot read {member} from {location}: {str(e).splitlines()[0] or type(e).__name__}") \
                from None

    images, labels = [], []
    for member in members:
        batch = read(member)
        try:
            data = np.asarray(batch[b"data"], np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"{member} in {location} is not a CIFAR batch ({e})") from None
    images, labels = np.concatenate(images), np.concatenate(labels)
    classes = specs.DATASETS[dataset].num_classes
    if len(images) != len(labels) or labels.min() < 0 or labels.max() >= classes:
        raise DataError(f"{location}: {split} split has {len(images)} images, {len(labels)} labels, "
                        f"labels outside 0..{classes - 1} or mismatched")
    return images, labels


def load_arrays(dataset, split, data_dir, seed, num_examples):
    """``(uint8 images, int64 labels)`` of an in-memory dataset from its files (no TensorFlow)."""
    spec = specs.DATASETS[dataset]
    if spec.source == "idx":
        images, labels = fashion_mnist(data_dir, split)
    elif spec.source == "generated":
        default = 1024 if split == "train" else 256
        images, labels = synthetic(num_examples or default, seed, split, spec.num_classes, spec.image_shape)
    elif spec.source == "cifar":
        images, labels = cifar(dataset, data_dir, split)
    else:
        raise ValueError(f"{dataset} is not read by keras_ffl.data.sources")
    if num_examples:
        images, labels = images[:num_examples], labels[:num_examples]
    return images, labels
