"""A dataset is a name resolved to training and test pipelines for the running backend.

``fashion_mnist`` reads Debian's IDX files, ``cifar10``/``cifar100`` their python-version
archives (or tfds), ``synthetic`` is generated; these are held in memory and streamed by
``keras_ffl.data.stream`` in NumPy, wrapped in tf.data on TensorFlow and fed as a Python
generator elsewhere: the same batches on every backend.  ``imagenet2012`` is streamed from
tfds records by tf.data (TensorFlow needed).  Normalisation statistics are those of the FFL
code for CIFAR, torchvision's for ImageNet and the training split's for Fashion-MNIST.

The training stream is a pure function of ``(seed, epoch)``: a run that is killed and
resumed at epoch k sees exactly the batches the uninterrupted run saw, and ``train_from(k)``
starts that stream at any epoch.  It is endless: ``fit`` draws ``steps_per_epoch`` batches
per epoch, which is exactly one epoch of the stream.
"""

import contextlib
import dataclasses
import math
import os
from typing import Any, Callable

from keras_ffl.data import augment
from keras_ffl.data.stream import EpochBatches
from keras_ffl.errors import ConfigError, DataError
from keras_ffl.specs import NORMALIZATION


@dataclasses.dataclass
class Data:
    train_from: Callable  # start epoch -> endless stream of training batches (what fit takes)
    test: Any  # the test batches (what evaluate takes)
    num_classes: int
    image_shape: tuple
    train_size: int
    test_size: int
    steps_per_epoch: int
    mean: tuple
    std: tuple
    config: Any = None  # the Config completed with what the data told (folder/tfds: classes, statistics)
    holdout: Any = None  # KDCL General's held-out (standardised images, labels), or None

    @property
    def train(self):
        """The training stream from epoch 0."""
        return self.train_from(0)


def uses_tf_data():
    import keras

    return keras.backend.backend() == "tensorflow"


def in_memory_split(config, split):
    """``(uint8 images, int64 labels)`` of an in-memory dataset."""
    from keras_ffl.data import sources

    spec = config.dataset_spec
    num_examples = config.train_examples if split == "train" else config.test_examples
    if spec.source == "folder":
        return folder_split(config, split, num_examples)
    if spec.source == "tfds_images":
        from keras_ffl.data.tfds import image_dataset

        tfds_split = config.train_split if split == "train" else config.test_split
        return image_dataset(config.dataset[len("tfds:"):], tfds_split, config.data_dir, config.download,
                             config.manual_dir, num_examples, spec.image_shape[0], split == "train")
    if spec.source == "cifar" and not sources.find_cifar_archive(config.dataset, config.resolved_data_dir):
        try:
            from keras_ffl.data.tfds import tfds_arrays
        except ImportError:
            archive = sources.CIFAR_ARCHIVES[config.dataset][0]
            raise DataError(f"{config.dataset}: put {archive} (https://www.cs.toronto.edu/~kriz/cifar.html) in "
                            "--data_dir, or install TensorFlow Datasets") from None
        return tfds_arrays(config.dataset, split, config.data_dir, config.download, num_examples)
    return sources.load_arrays(config.dataset, split, config.resolved_data_dir, config.seed, num_examples)


def folder_split(config, split, num_examples):
    """A split of a folder dataset: ``test/``, or ``--validation_fraction`` of ``train/``."""
    from keras_ffl.data import folder

    listing = folder.scan(config.data_dir)
    if config.class_names and tuple(config.class_names) != listing.classes:  # label k must mean class k
        trained, found = list(config.class_names), list(listing.classes)
        extra, missing = [c for c in found if c not in trained], [c for c in trained if c not in found]
        what = "; ".join(part for part in (f"extra {', '.join(extra)}" if extra else "",
                                           f"missing {', '.join(missing)}" if missing else "") if part)
        raise ConfigError(f"{os.path.join(config.data_dir, 'train')} has other class folders than the run was trained "
                          f"on ({what or 'in another order'}): it needs exactly {', '.join(trained)}")
    examples = listing.test if split == "test" else listing.train
    if not listing.test:
        keep, held = folder.stratified_holdout([label for _, label in listing.train], config.validation_fraction,
                                               config.seed)
        examples = [listing.train[i] for i in (held if split == "test" else keep)]
    if num_examples:  # the listing is sorted by class: a sample, not the first N
        positions = folder.stratified_sample([label for _, label in examples], num_examples, config.seed,
                                             stream=10 if split == "train" else 11)
        examples = [examples[i] for i in positions]
    return folder.load(examples, config.dataset_spec.image_shape[0], split == "train")


def class_counts(labels, num_classes):
    """Images of each class in ``labels``, as a tuple (what config.json records)."""
    import numpy as np

    return tuple(int(n) for n in np.bincount(np.asarray(labels, np.int64), minlength=num_classes))


def data_facts(config, images):
    """What a folder or tfds:NAME dataset tells the Config: classes, training-split size and,
    unless the run already has them, its per-channel statistics (a seeded sample of at most
    10,000 training images)."""
    if config.dataset in NORMALIZATION:
        return {}
    from keras_ffl.data.folder import channel_statistics

    facts = {"train_size": len(images)}
    if not config.mean:
        facts["mean"], facts["std"] = channel_statistics(images, config.seed)
    if config.dataset.startswith("tfds:") and not config.class_names:
        from keras_ffl.data.tfds import class_names

        facts["class_names"] = class_names(config.dataset[len("tfds:"):], config.data_dir)
    return facts


def recipe_of(config, image_side):
    """The training augmentation of a Config (``Config.augmentation``) for stored images of
    side ``image_side``."""
    name = config.augmentation
    if name == "none":
        return None
    if name == "pad_crop_flip":
        return augment.PadCropFlip()
    return augment.ResizedCropFlip(config.dataset_spec.image_shape[0]).bind(image_side)


def held_out(labels, count, seed):
    """KDCL General's held-out examples: ``count`` of a seeded permutation, kept out of training."""
    import numpy as np

    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) % 2**63, 9])))
    order = rng.permutation(len(labels))
    return order[count:], order[:count]


def steps_for(config, train_size):
    steps = math.ceil(train_size / config.batch_size) if train_size else 0
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch) if steps else config.steps_per_epoch
    return steps


class EvaluationBatches:
    """The test split as a re-iterable ``keras.utils.PyDataset`` (fit validates every epoch)."""

    def __new__(cls, batches, batch_size, shard=(0, 1)):
        import keras

        from keras_ffl.data.stream import share

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return math.ceil(batches.size / batch_size)

            def __getitem__(self, index):
                positions = range(index * batch_size, min((index + 1) * batch_size, batches.size))
                return batches.batch(0, share(positions, shard))

        return Batches()


def load_data(config, splits=("train", "test"), views=1, with_index=False, shard=(0, 1), negatives=0, holdout=0):
    """Builds the pipelines for a validated ``Config``; raises DataError on unreadable data.

    ``views`` and ``with_index`` are what a method asks of its inputs (several augmented
    copies of each image, each example's index, k contrast negatives per example).  ``shard`` =
    (index, count): where several
    processes feed one data-parallel step (JAX multi-process), this process's contiguous
    share of every global batch (tf.distribute splits batches itself).  ``holdout``: examples
    kept out of training (KDCL General), returned standardised as ``Data.holdout``.

    ``Data.config`` is ``config`` completed with what a folder or tfds:NAME dataset tells (its
    classes, size and statistics); train saves it as the run's config.json."""
    spec = config.dataset_spec
    if spec.shuffle_window:
        return streamed_data(config, splits, *config.normalization)
    train_from, test, train_size, test_size, holdout_data = None, None, 0, 0, None
    steps = 0
    if "train" in splits:
        images, labels = in_memory_split(config, "train")
        if holdout:
            keep, held = held_out(labels, holdout, config.seed)
            holdout_images, holdout_labels = images[held], labels[held]
            images, labels = images[keep], labels[keep]
        config = config.with_data_facts(**data_facts(config, images))
        config = config.with_data_facts(train_class_counts=class_counts(labels, config.dataset_spec.num_classes))
        if holdout:
            holdout_data = (augment.normalize(holdout_images, *config.normalization), holdout_labels)
        train_size = len(labels)
        steps = steps_for(config, train_size)
        mean, std = config.normalization
        batches = EpochBatches(images, labels, config.seed, mean, std, recipe_of(config, images.shape[1]), views,
                               with_index, negatives=negatives)
        if uses_tf_data():
            from keras_ffl.data.tf_pipeline import in_memory_training

            train_from = in_memory_training(batches, config.batch_size, steps)
        else:
            def train_from(start_epoch=0, batches=batches):
                return batches.batches(start_epoch, config.batch_size, steps, shard=shard)
    if "test" in splits:
        images, labels = in_memory_split(config, "test")
        test_size = len(labels)
        config = config.with_data_facts(test_class_counts=class_counts(labels, config.dataset_spec.num_classes))
        mean, std = config.normalization
        batches = EpochBatches(images, labels, config.seed, mean, std, shuffle=False, with_index=with_index)
        if uses_tf_data():
            from keras_ffl.data.tf_pipeline import in_memory_evaluation

            test = in_memory_evaluation(batches, config.eval_batch_size)
        else:
            test = EvaluationBatches(batches, config.eval_batch_size, shard)
    spec = config.dataset_spec
    return Data(train_from, test, spec.num_classes, spec.image_shape, train_size, test_size, steps,
                *config.normalization, config=config, holdout=holdout_data)


def streamed_data(config, splits, mean, std):
    """imagenet2012-style data: tfds records, decoded and augmented per image by tf.data."""
    try:
        from keras_ffl.data import tf_pipeline
        from keras_ffl.data.tfds import streamed_split
    except ImportError:
        raise DataError(f"{config.dataset} is streamed by tf.data: it needs TensorFlow and TensorFlow Datasets") \
            from None
    spec = config.dataset_spec
    args = dict(dataset=config.dataset, data_dir=config.data_dir, download=config.download,
                manual_dir=config.manual_dir)
    image_size = spec.image_shape[0]
    train_from, test, train_size, test_size, steps = None, None, 0, 0, 0
    if "train" in splits:
        raw, train_size = streamed_split(split="train", num_examples=config.train_examples, **args)
        steps = steps_for(config, train_size)
        train_from = tf_pipeline.streamed_training(raw, config.batch_size, steps, mean, std, config.seed,
                                                   config.augmentation != "none", spec.shuffle_window, image_size)
    if "test" in splits:
        raw, test_size = streamed_split(split="test", num_examples=config.test_examples, **args)
        test = tf_pipeline.streamed_evaluation(raw, config.eval_batch_size, mean, std, image_size)
    return Data(train_from, test, spec.num_classes, spec.image_shape, train_size, test_size, steps, mean, std,
                config=config)


def load_arrays(dataset, split="train", data_dir=""):
    """One split of an in-memory dataset as NumPy arrays: ``(uint8 images [N, H, W, C], int64
    labels [N])``.  ``fashion_mnist`` reads Debian's files (``apt-get install
    dataset-fashion-mnist``) unless ``data_dir`` says where; ``cifar10``/``cifar100`` the
    python-version archive in ``data_dir``."""
    from keras_ffl import specs
    from keras_ffl.data import sources

    if dataset not in specs.DATASETS or specs.DATASETS[dataset].shuffle_window:
        raise ValueError(f"load_arrays reads {', '.join(d for d, s in specs.DATASETS.items() if not s.shuffle_window)}, "
                         f"not '{dataset}'")
    folder = data_dir or specs.DATASETS[dataset].default_data_dir
    return sources.load_arrays(dataset, split, folder, seed=0, num_examples=0)


def standardize(images, dataset):
    """uint8 images -> float32 standardised with the dataset's statistics (what training sees)."""
    return augment.normalize(images, *NORMALIZATION[dataset])


def raw_test_images(config, count, data_dir=""):
    """The first ``count`` test images as float32 pixels in [0, 255] (what an exported model
    takes), and their labels."""
    import numpy as np

    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir, test_examples=count)
    if config.dataset_spec.shuffle_window:
        from keras_ffl.data.imagenet import evaluation_example
        from keras_ffl.data.tfds import streamed_split

        raw, _ = streamed_split(config.dataset, "test", config.data_dir, config.download, count, config.manual_dir)
        size = config.dataset_spec.image_shape[0]
        images, labels = zip(*[(np.asarray(x), int(y)) for x, y in
                               raw.map(lambda *e: evaluation_example(*e, size=size)).as_numpy_iterator()])
        return np.stack(images).astype(np.float32), np.asarray(labels)
    images, labels = in_memory_split(config, "test")
    return images.astype(np.float32), labels


@contextlib.contextmanager
def corrupt_records_named(config):
    """On TensorFlow, a corrupt record met mid-run becomes a one-line DataError naming it
    (``keras_ffl.data.tf_pipeline.corrupt_records_named``); elsewhere nothing to translate."""
    if not uses_tf_data():
        yield
        return
    from keras_ffl.data.tf_pipeline import corrupt_records_named as translate

    with translate(config):
        yield


__all__ = ["Data", "DataError", "EpochBatches", "corrupt_records_named", "load_arrays", "load_data", "NORMALIZATION",
           "standardize"]
