"""Training augmentation and normalisation: the one place that touches pixels.

Augmentation runs on whole batches with vectorised ops (one gather per axis), which is
several times cheaper than a per-image ``map`` on a 2-core machine; its random numbers come
from the caller, drawn statelessly per example, so results depend neither on thread
scheduling nor on how examples are batched.
If keras-cv policies (RandAugment, CutMix...) are ever offered, they belong here.
"""

import tensorflow as tf


def pad_crop_flip(images, draws, pad=4):
    """Reflect-pad by ``pad``, random crop back to size, random horizontal flip.

    ``images``: [B, H, W, C] batch; ``draws``: [B, 3] uniform numbers in [0, 1) per image
    (vertical offset, horizontal offset, flip), drawn by the caller per example so that an
    image's augmentation does not depend on the batch it lands in.
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.cast(tf.floor(draws[:, :2] * (2 * pad + 1)), tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:2] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    flip = draws[:, 2] < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def normalize(images, mean, std):
    """uint8 [0, 255] -> float32 standardised per channel."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
