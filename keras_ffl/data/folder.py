"""Your own images: a folder of class folders, read into memory with Pillow (no TensorFlow).

    DIR/train/<class>/*.{jpg,jpeg,png,bmp,gif}
    DIR/test/<class>/*          (optional: else --validation_fraction of train/ is held out)

Class names are the folder names, sorted; names starting with a dot (``.ipynb_checkpoints``,
macOS's ``._photo.jpg``) are skipped.  Every image is decoded once, converted to RGB (a
greyscale image is replicated to three channels; a GIF gives its first frame) and brought to
a fixed size:

* small images (``image_size`` < 64, the CIFAR recipe): the shorter side resized to
  ``image_size``, then the central square;
* large images (the ImageNet recipe): training images stored at ``image_size / 0.875``
  (shorter side, central square) so that a random-resized crop can be taken from them; test
  images resized to that, then the central ``image_size`` crop.

The listing is checked before any work (``scan``): a missing split, an empty class folder or a
single class is a one-line error.  An image that cannot be decoded is named in the error.
"""

import dataclasses
import os

import numpy as np

from keras_ffl.errors import ConfigError, DataError
from keras_ffl.specs import LARGE_IMAGE_SIZE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EVAL_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class Listing:
    classes: tuple  # class names, sorted
    train: tuple  # ((path, label), ...)
    test: tuple  # empty when the test split is held out of train


def list_split(root, split, classes=None):
    folder = os.path.join(root, split)
    found = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    classes = tuple(found) if classes is None else classes
    if classes != tuple(found):
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise ConfigError(f"{folder} has other class folders than train/: "
                          f"{'extra ' + ', '.join(extra) if extra else ''}{'; ' if extra and missing else ''}"
                          f"{'missing ' + ', '.join(missing) if missing else ''}")
    examples = []
    for label, name in enumerate(classes):
        class_folder = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_folder)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            raise ConfigError(f"class folder {class_folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        examples += [(os.path.join(class_folder, f), label) for f in files]
    return classes, tuple(examples)


def scan(root):
    """The folder dataset's listing; ConfigError for a missing split, an empty class or one class."""
    if not root or not os.path.isdir(root):
        raise ConfigError(f"--dataset=folder needs --data_dir, a folder holding train/<class>/ (got '{root}')")
    if not os.path.isdir(os.path.join(root, "train")):
        raise ConfigError(f"{root} has no train/ folder: expected train/<class>/*.jpg|png|bmp|gif")
    classes, train = list_split(root, "train")
    if len(classes) < 2:
        raise ConfigError(f"{os.path.join(root, 'train')} holds {len(classes)} class folder(s): a classifier needs two "
                          "or more")
    test = list_split(root, "test", classes)[1] if os.path.isdir(os.path.join(root, "test")) else ()
    return Listing(classes, train, test)


def stratified_holdout(labels, fraction, seed):
    """``(train positions, held-out positions)``: ``fraction`` of every class, chosen by ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) % 2**63, 7])))
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if count >= len(members):
            raise ConfigError(f"--validation_fraction={fraction} would leave class {label} nothing to train on")
        held += list(rng.choice(members, size=count, replace=False))
    held = np.sort(np.asarray(held, np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


def stratified_sample(labels, count, seed, stream):
    """Positions (in order) of a seeded sample of ``count`` of ``labels``: every class in
    proportion to its size (largest remainders), at least one image each.  ``stream`` keeps the
    training and test samples' draws apart."""
    labels = np.asarray(labels)
    if not count or count >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    if count < len(classes):
        raise ConfigError(f"a sample of {count} images cannot hold one of each of {len(classes)} classes")
    share = (count - len(classes)) * (sizes - 1) / max(int(sizes.sum()) - len(classes), 1)
    take = 1 + np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - np.floor(share)), kind="stable")[:count - int(take.sum())]:
        take[i] += 1
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) % 2**63, stream])))
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def stored_size(image_size, train):
    """The side images are kept at: larger for training under the ImageNet recipe."""
    if image_size >= LARGE_IMAGE_SIZE and train:
        return int(round(image_size / EVAL_CROP_FRACTION))
    return image_size


def decode(path, side, final):
    """One image file as uint8 RGB: shorter side to ``side``, the central square, then the
    central ``final`` crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.seek(0)
            picture = to_rgb(picture)
            picture.load()
    except Image.DecompressionBombError as e:  # Pillow's guard against huge images
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    return fit(picture, side, final)


def to_rgb(picture):
    """A Pillow image of any mode it opens as 8-bit RGB, each mode read in its own range: 16-bit
    greyscale (PNG's ``I;16``) and 32-bit integer pixels (``I``, which must lie in 0..65535) are
    scaled by 255 / 65535 (Pillow's own conversion clips them at 255, a white image); floating-
    point pixels (``F``) have no fixed range and are refused (ValueError)."""
    from PIL import Image

    if picture.mode.startswith("I"):
        pixels = np.asarray(picture).astype(np.float64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"{picture.mode} pixels from {pixels.min():.0f} to {pixels.max():.0f}, outside the 16-bit "
                             "range 0..65535")
        return Image.fromarray(np.round(pixels / 257.0).astype(np.uint8)).convert("RGB")
    if picture.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no fixed range: save the image with 8 or 16 bits")
    return picture.convert("RGB")


def fit(picture, side, final):
    """A Pillow RGB image: shorter side to ``side``, the central ``final`` square."""
    from PIL import Image

    width, height = picture.size
    scale = side / min(width, height)
    size = (max(side, int(round(width * scale))), max(side, int(round(height * scale))))
    picture = picture.resize(size, Image.BILINEAR)
    left, top = (size[0] - final) // 2, (size[1] - final) // 2
    return np.asarray(picture.crop((left, top, left + final, top + final)), np.uint8)


def sides(image_size, train):
    """``(side the shorter edge is resized to, final square)`` for a split."""
    side = stored_size(image_size, True)
    return (side, side) if train else (side, image_size)


def load(examples, image_size, train):
    """``(uint8 images [N, S, S, 3], int64 labels)`` of ``examples`` ((path, label) pairs)."""
    side, final = sides(image_size, train)
    images = np.empty((len(examples), final, final, 3), np.uint8)
    for i, (path, _) in enumerate(examples):
        images[i] = decode(path, side, final)
    return images, np.asarray([label for _, label in examples], np.int64)


def fit_arrays(images, image_size, train):
    """Decoded images (any sizes, 1 or 3 channels, or one array [N, H, W, C]) brought to the
    stored size, as ``load`` does to files."""
    from PIL import Image

    side, final = sides(image_size, train)
    out = np.empty((len(images), final, final, 3), np.uint8)
    for i, image in enumerate(images):
        image = np.asarray(image)
        image = np.round(image / 257.0).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
        out[i] = fit(picture, side, final)
    return out


def channel_statistics(images, seed, sample=10000):
    """Per-channel mean and std of pixels / 255 over a seeded sample of at most ``sample`` images."""
    if len(images) > sample:
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) % 2**63, 8])))
        images = images[np.sort(rng.choice(len(images), size=sample, replace=False))]
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(round(v, 6)) for v in pixels.mean(0)), tuple(float(round(max(v, 1e-3), 6))
                                                                       for v in pixels.std(0))
