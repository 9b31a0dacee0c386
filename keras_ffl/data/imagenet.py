"""ImageNet-style per-image preprocessing: JPEG bytes in, fixed-size float pixels out.

Training: the standard "random resized crop" (a crop covering 8%-100% of the image with
aspect ratio 3/4-4/3, found by ``sample_distorted_bounding_box`` as in TensorFlow's
official ResNet input pipeline, the whole image after 10 failed attempts), resized to
``size`` x ``size``, then a random horizontal flip.  Evaluation: resize the shorter side to
``size / 0.875`` (256 for 224) and take the central ``size`` x ``size`` crop.  Only the crop
window is decoded (``decode_and_crop_jpeg``).

Randomness is stateless (the caller passes a per-image seed), so a resumed epoch sees the
same crops.  An image whose bytes are not a complete JPEG (no start or end marker, the
usual signature of a truncated file) stops the pipeline with an error naming its record.
"""

import tensorflow as tf

#: Marker put in the error of a corrupt image, so train can turn it into a one-line message.
CORRUPT_RECORD = "corrupt image record"
EVAL_CROP_FRACTION = 0.875


def checked_jpeg(image_bytes, name):
    """``image_bytes`` after asserting it starts with SOI (FF D8) and ends with EOI (FF D9)."""
    complete = tf.logical_and(
        tf.equal(tf.strings.substr(image_bytes, 0, 2), b"\xff\xd8"),
        tf.equal(tf.strings.substr(image_bytes, -2, 2), b"\xff\xd9"),
    )
    message = tf.strings.join([f"{CORRUPT_RECORD}: ", name, " (not a complete JPEG)"])
    check = tf.debugging.Assert(complete, [message])
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def training_example(image_bytes, label, name, seed, size, augment=True):
    image_bytes = checked_jpeg(image_bytes, name)
    if not augment:
        return evaluation_example(image_bytes, label, name, size, check=False)
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=tf.random.experimental.stateless_fold_in(seed, 0),
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = tf.image.resize(image, [size, size], method="bilinear")
    flip = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    return image, label


def evaluation_example(image_bytes, label, name, size, check=True):
    if check:
        image_bytes = checked_jpeg(image_bytes, name)
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized, method="bilinear")
    top = (resized[0] - size) // 2
    left = (resized[1] - size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, size, size)
    return image, label
