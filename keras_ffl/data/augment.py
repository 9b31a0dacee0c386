"""Training augmentation and normalisation: the one place that touches pixels.

Augmentation runs on whole batches with vectorised ops (one gather per axis), which is
several times cheaper than a per-image ``map`` on a 2-core machine, and uses stateless
random ops fed by a seeded stream so results do not depend on thread scheduling.
If keras-cv policies (RandAugment, CutMix...) are ever offered, they belong here.
"""

import tensorflow as tf


def pad_crop_flip(images, seed, pad=4):
    """Reflect-pad by ``pad``, random crop back to size, random horizontal flip.

    ``images``: [B, H, W, C] batch; ``seed``: int64 tensor of shape [2] (stateless RNG).
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    seeds = tf.random.experimental.stateless_split(seed, 3)
    offset_y = tf.random.stateless_uniform([batch], seeds[0], 0, 2 * pad + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform([batch], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
    rows = offset_y[:, None] + tf.range(height)[None, :]
    cols = offset_x[:, None] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([batch], seeds[2]) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def normalize(images, mean, std):
    """uint8 [0, 255] -> float32 standardised per channel."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
