"""Data: Fashion-MNIST IDX files, CIFAR from its python archives and through tfds mock data,
synthetic data, augmentation, and one training stream for every backend."""

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import tiny_config
from keras_ffl.config import ConfigError
from keras_ffl.data import load_data
from keras_ffl.data.augment import PadCropFlip
from keras_ffl.data.sources import DataError, read_idx
from keras_ffl.data.stream import EpochBatches


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_real_fashion_mnist_is_read_from_debian_idx_files(fashion_mnist_dir):
    config = tiny_config(dataset="fashion_mnist", data_dir=fashion_mnist_dir, train_examples=256, test_examples=200,
                         batch_size=64, eval_batch_size=100)
    data = load_data(config)
    assert (data.num_classes, data.image_shape, data.train_size, data.test_size) == (10, (28, 28, 1), 256, 200)
    assert data.steps_per_epoch == 4
    images, labels = next(iter(data.test))
    assert images.shape == (100, 28, 28, 1) and images.dtype == tf.float32
    # Normalised with the training split's statistics: roughly zero mean, unit variance.
    assert abs(float(tf.reduce_mean(images))) < 0.3 and 0.7 < float(tf.math.reduce_std(images)) < 1.3
    assert set(np.unique(labels.numpy())) <= set(range(10)) and len(np.unique(labels.numpy())) > 5


def test_idx_reader_round_trip_and_corruption(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = str(tmp_path / "x-idx3-ubyte.gz")
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(str(bad))


def test_missing_fashion_mnist_files_name_the_apt_package(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        tiny_config(dataset="fashion_mnist", data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match="files missing"):
        tiny_config(dataset="fashion_mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("name,classes", [("cifar100", 100), ("cifar10", 10)])
def test_cifar_pipeline_through_tfds_mock_data(name, classes):
    config = tiny_config(dataset=name, train_examples=0, test_examples=0, batch_size=8, eval_batch_size=10,
                         download=False)
    with tfds.testing.mock_data(num_examples=20):
        data = load_data(config)
        images, labels = next(iter(data.train))
        test_images, _ = next(iter(data.test))
    assert data.num_classes == classes and data.image_shape == (32, 32, 3)
    assert data.train_size == 20 and data.steps_per_epoch == 3
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
    assert test_images.shape == (10, 32, 32, 3)
    assert labels.dtype == tf.int64 and int(tf.reduce_max(labels)) < classes


def test_synthetic_data_is_deterministic_and_learnable_shape():
    a = load_data(tiny_config(train_examples=40, batch_size=40))
    b = load_data(tiny_config(train_examples=40, batch_size=40))
    xa, ya = next(iter(a.test))
    xb, yb = next(iter(b.test))
    np.testing.assert_array_equal(xa.numpy(), xb.numpy())
    np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_pad_crop_flip_gives_crops_of_the_reflect_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 8, 8, 2)).astype(np.uint8)
    recipe = PadCropFlip(pad=2)
    out = recipe.apply(images, recipe.draw(np.random.default_rng(3), len(images)))
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets_seen = set()
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if np.array_equal(out[i], (lambda c: c[:, ::-1] if flip else c)(padded[i, dy : dy + 8, dx : dx + 8]))
        ]
        assert matches, f"image {i} is not a crop of its padded version"
        offsets_seen.add(matches[0])
    assert len(offsets_seen) > 1  # the crops are random, not all the same


def test_tf_data_feeds_exactly_the_numpy_stream_of_the_other_backends():
    """TensorFlow's pipeline and the generator JAX trains on give bit-identical batches, and
    epoch k of a stream started at k equals epoch k of the whole stream."""
    config = tiny_config(train_examples=40, batch_size=16)
    data = load_data(config)  # TensorFlow: tf.data
    tf_batches = [(x.numpy(), y.numpy()) for x, y in data.train.take(6)]  # 2 epochs of 3 steps
    images, labels = load_arrays_for(config)
    from keras_ffl.data import NORMALIZATION

    stream = EpochBatches(images, labels, config.seed, *NORMALIZATION["synthetic"], recipe=PadCropFlip())
    numpy_batches = stream.batches(0, 16, 3)
    for (x, y), (nx, ny) in zip(tf_batches, numpy_batches):
        np.testing.assert_array_equal(x, nx)
        np.testing.assert_array_equal(y, ny)
    assert [len(y) for _, y in tf_batches] == [16, 16, 8, 16, 16, 8]
    from_epoch_1 = [x.numpy() for x, _ in data.train_from(1).take(3)]
    for a, (b, _) in zip(from_epoch_1, tf_batches[3:]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tf_batches[0][0], tf_batches[3][0])  # a new order and new crops


def load_arrays_for(config):
    from keras_ffl.data import in_memory_split

    return in_memory_split(config, "train")


def test_positions_key_the_augmentation_so_shares_of_a_batch_are_the_batch():
    """A process (or replica) that assembles its share of a batch gets exactly that share."""
    from keras_ffl.data.stream import share

    rng = np.random.default_rng(1)
    stream = EpochBatches(rng.integers(0, 255, (20, 8, 8, 3)).astype(np.uint8), np.arange(20), 5, (0.5,) * 3,
                          (0.25,) * 3, recipe=PadCropFlip(), views=2, with_index=True)
    whole, labels = stream.batch(3, np.arange(4, 12))
    parts = [stream.batch(3, share(np.arange(4, 12), (i, 2))) for i in range(2)]
    for key in ("images", "views", "index"):
        np.testing.assert_array_equal(np.concatenate([p[0][key] for p in parts]), whole[key])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
    assert whole["views"].shape == (8, 2, 8, 8, 3)
    assert not np.array_equal(whole["views"][:, 0], whole["views"][:, 1])  # independent augmentations
    np.testing.assert_array_equal(whole["views"][:, 0], whole["images"])
    np.testing.assert_array_equal(labels, whole["index"])  # labels here are the indices


def write_cifar_archive(folder, name, train, test):
    """A CIFAR python-version archive in the real format (pickled dicts of CHW rows)."""
    top, label_key, members = {"cifar10": ("cifar-10-batches-py", b"labels", ["data_batch_1", "data_batch_2",
                                                                              "data_batch_3", "data_batch_4",
                                                                              "data_batch_5"]),
                               "cifar100": ("cifar-100-python", b"fine_labels", ["train"])}[name]
    chunks = np.array_split(np.arange(len(train[1])), len(members))
    payloads = {m: (train[0][c], train[1][c]) for m, c in zip(members, chunks)}
    payloads["test" if name == "cifar100" else "test_batch"] = test
    path = folder / (("cifar-10" if name == "cifar10" else "cifar-100") + "-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for member, (images, labels) in payloads.items():
            data = pickle.dumps({b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                                 label_key: [int(v) for v in labels], b"filenames": [b"x"] * len(labels)})
            info = tarfile.TarInfo(f"{top}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_the_python_archive_users_download(tmp_path, name, classes):
    rng = np.random.default_rng(2)
    train = (rng.integers(0, 255, (30, 32, 32, 3)).astype(np.uint8), rng.integers(0, classes, 30))
    test = (rng.integers(0, 255, (12, 32, 32, 3)).astype(np.uint8), rng.integers(0, classes, 12))
    write_cifar_archive(tmp_path, name, train, test)
    config = tiny_config(dataset=name, data_dir=str(tmp_path), train_examples=0, test_examples=0, batch_size=10,
                         eval_batch_size=12)
    from keras_ffl.data import in_memory_split

    images, labels = in_memory_split(config, "train")
    np.testing.assert_array_equal(images, train[0])  # HWC, in the archive's order
    np.testing.assert_array_equal(labels, train[1])
    data = load_data(config)
    x, y = next(iter(data.test))
    np.testing.assert_array_equal(y.numpy(), test[1])
    mean, std = np.array(data.mean, np.float32), np.array(data.std, np.float32)
    np.testing.assert_allclose(x.numpy(), (test[0] / np.float32(255) - mean) / std, rtol=1e-6)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / write_cifar_archive(tmp_path, name, train, test).name).write_bytes(b"not a tar file")
    with pytest.raises(DataError, match="cannot read"):
        in_memory_split(tiny_config(dataset=name, data_dir=str(broken)), "train")


def test_augmentation_stream_is_seeded():
    config = tiny_config(train_examples=32, batch_size=32)
    first = next(iter(load_data(config).train))[0].numpy()
    second = next(iter(load_data(config).train))[0].numpy()
    np.testing.assert_array_equal(first, second)
    other = next(iter(load_data(tiny_config(train_examples=32, batch_size=32, seed=1)).train))[0].numpy()
    assert not np.array_equal(first, other)


def imagenet_config(**overrides):
    base = dict(dataset="imagenet2012", backbones=("resnet18",), train_examples=0, test_examples=0, batch_size=4,
                eval_batch_size=3, download=False)
    return tiny_config(**{**base, **overrides})


def test_imagenet_pipeline_through_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=10):
        data = load_data(imagenet_config())
        first = [x.numpy() for x, _ in data.train.take(6)]  # epochs 0 and 1 (3 steps each)
        again = [x.numpy() for x, _ in data.train_from(1).take(3)]
        test_images, test_labels = next(iter(data.test))
    assert (data.num_classes, data.image_shape, data.train_size, data.test_size) == (1000, (224, 224, 3), 10, 10)
    assert data.steps_per_epoch == 3
    assert first[0].shape == (4, 224, 224, 3) and first[2].shape == (2, 224, 224, 3)  # the epoch's last batch
    assert test_images.shape == (3, 224, 224, 3) and test_labels.dtype == tf.int64
    assert abs(float(np.mean(first[0]))) < 1.5 and 0.2 < float(np.std(first[0])) < 2.0  # standardised
    # The stream is a function of (seed, epoch): epoch 1 from a fresh start equals epoch 1 of
    # the whole stream, and differs from epoch 0 (new order, new crops).
    for a, b in zip(first[3:], again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[3])


def test_a_corrupt_image_record_is_named(monkeypatch):
    from keras_ffl.data import tfds as sources
    from keras_ffl.errors import DataError as UserDataError
    from keras_ffl.data import corrupt_records_named

    good = tf.io.encode_jpeg(tf.zeros((40, 30, 3), tf.uint8)).numpy()
    records = ([good, good[: len(good) // 2], good], [1, 2, 3], [b"n0001_a.JPEG", b"n0002_torn.JPEG", b"n0003_c.JPEG"])

    def fake_split(name, split, data_dir, download, manual_dir=""):
        return tf.data.Dataset.from_tensor_slices(records)

    monkeypatch.setattr(sources, "tfds_split", fake_split)
    config = imagenet_config(batch_size=3, model_dir="runs/x")
    data = load_data(config)
    with pytest.raises(UserDataError, match=r"corrupt image record: n0002_torn.JPEG \(not a complete JPEG\); the last"):
        with corrupt_records_named(config):
            next(iter(data.train))
    with pytest.raises(tf.errors.InvalidArgumentError, match="n0002_torn.JPEG"):
        next(iter(data.test))


def test_a_corrupt_tfrecord_shard_is_named(tmp_path, monkeypatch):
    from keras_ffl.data import corrupt_records_named
    from keras_ffl.data import tfds as sources
    from keras_ffl.errors import DataError as UserDataError

    paths = [str(tmp_path / f"cifar10-train.tfrecord-0000{i}-of-00002") for i in range(2)]
    for path in paths:
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(5):
                writer.write(b"record %d " % i * 10)
    damaged = bytearray(open(paths[1], "rb").read())
    damaged[130] ^= 0xFF  # a flipped byte inside the third record's payload
    open(paths[1], "wb").write(bytes(damaged))
    assert sources.find_corrupt_tfrecord(paths).startswith(f"corrupt TFRecord {paths[1]} (corrupted record at ")

    monkeypatch.setattr(sources, "tfds_record_files", lambda name, data_dir: paths)
    config = tiny_config(dataset="cifar10", download=False, model_dir="runs/x")
    with pytest.raises(UserDataError, match=f"corrupt TFRecord {paths[1]} .*the last checkpoint in runs/x is intact"):
        with corrupt_records_named(config):
            for _ in tf.data.TFRecordDataset(paths):
                pass
