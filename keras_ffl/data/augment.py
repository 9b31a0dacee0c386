"""Training augmentation and normalisation of in-memory images, in NumPy: the one place that
touches their pixels, shared by every backend.

A recipe draws its random numbers for a whole epoch at once (``draw``, from the epoch's
generator, indexed by position) and applies them to any batch (``apply``), so an image's
augmentation depends neither on the batch it lands in nor on threads.

* ``PadCropFlip``: the CIFAR recipe (FFL code): reflect-pad 4, random crop back to size,
  random horizontal flip;
* ``ResizedCropFlip``: the ImageNet recipe: a random crop of 8-100% of the area with aspect
  ratio 3/4-4/3 (10 tries, else the central crop), resized to the output size, random flip.

Why NumPy and not Keras's augmentation layers (or keras-cv): an epoch's draws are a function of
(seed, epoch) alone, the same on every backend and on every process of a cluster, and a resumed
epoch repeats them exactly; Keras's random layers draw from a backend's generator per batch.
"""

import math

import numpy as np


def normalize(images, mean, std):
    """uint8 [0, 255] -> float32 standardised per channel: ``(x / 255 - mean) / std``."""
    images = images.astype(np.float32) / np.float32(255.0)
    return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class PadCropFlip:
    """Reflect-pad by ``pad``, random crop back to size, random horizontal flip."""

    name = "pad_crop_flip"

    def __init__(self, pad=4):
        self.pad = pad

    def draw(self, rng, count):
        return {"offsets": rng.integers(0, 2 * self.pad + 1, size=(count, 2)), "flips": rng.random(count) < 0.5}

    def apply(self, images, draws):
        """``images`` [B, H, W, C] uint8; returns the augmented batch, same shape."""
        count, height, width = images.shape[:3]
        p = self.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        rows = draws["offsets"][:, :1] + np.arange(height)[None, :]
        cols = draws["offsets"][:, 1:] + np.arange(width)[None, :]
        out = padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
        flips = draws["flips"]
        out[flips] = out[flips, :, ::-1]
        return out


class ResizedCropFlip:
    """Random-resized crop (Inception style) of stored ``[B, S, S, C]`` images to ``size``,
    then a random horizontal flip; resizing is bilinear (Pillow)."""

    name = "resized_crop_flip"

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), attempts=10):
        self.size, self.scale, self.ratio, self.attempts = size, scale, ratio, attempts
        self.stored = None  # the stored image side, set by ``bind``

    def bind(self, stored_side):
        self.stored = stored_side
        return self

    def draw(self, rng, count):
        side = self.stored
        area = side * side * rng.uniform(*self.scale, size=(count, self.attempts))
        log_ratio = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), size=(count, self.attempts))
        aspect = np.exp(log_ratio)
        widths = np.round(np.sqrt(area * aspect)).astype(np.int64)
        heights = np.round(np.sqrt(area / aspect)).astype(np.int64)
        fits = (widths > 0) & (heights > 0) & (widths <= side) & (heights <= side)
        first = np.argmax(fits, axis=1)
        found = fits[np.arange(count), first]
        w = np.where(found, widths[np.arange(count), first], side)
        h = np.where(found, heights[np.arange(count), first], side)
        top = np.floor(rng.random(count) * (side - h + 1)).astype(np.int64)
        left = np.floor(rng.random(count) * (side - w + 1)).astype(np.int64)
        return {"boxes": np.stack([top, left, h, w], axis=1), "flips": rng.random(count) < 0.5}

    def apply(self, images, draws):
        from PIL import Image

        out = np.empty((len(images), self.size, self.size, images.shape[-1]), np.uint8)
        for i, (image, (top, left, h, w)) in enumerate(zip(images, draws["boxes"])):
            out[i] = resize(image, (self.size, self.size), box=(left, top, left + w, top + h), pil=Image)
        flips = draws["flips"]
        out[flips] = out[flips, :, ::-1]
        return out


def resize(image, size, box=None, pil=None):
    """One uint8 image [H, W, C] to ``size`` (height, width), bilinear, optionally from ``box``
    (left, top, right, bottom)."""
    if pil is None:
        from PIL import Image as pil
    channels = image.shape[-1]
    picture = pil.fromarray(image[..., 0] if channels == 1 else image)
    resized = np.asarray(picture.resize((size[1], size[0]), pil.BILINEAR, box=box))
    return resized[..., None] if channels == 1 else resized
