"""BatchNorm that runs TensorFlow's fused kernel where it applies.

Keras 3's TensorFlow backend normalises from separate ops (moments, then
``tf.nn.batch_normalization``: about ten kernels and their gradients per layer). TensorFlow's
``FusedBatchNormV3`` does the forward pass, and its gradient, in one kernel each. It computes
the same function: the batch mean and biased variance in training, the moving statistics in
inference, ``gamma * (x - mean) / sqrt(var + eps) + beta``. The layer is Keras's
``BatchNormalization`` everywhere else: the same variables, the same moving-average update
(with Keras's biased batch variance), the same ``.keras`` config plus nothing, and the stock
code path on JAX and PyTorch, for float64 (the kernel has no float64), for synchronised
statistics across replicas, masks, renorm, any layout but channels-last 4-D, and under XLA
(``jit_compile``): XLA lowers the fused op to its BatchNormTraining, which takes the variance
as E[x^2] - E[x]^2 in float32 and loses it where a channel's mean is large against its spread
(a channel of mean 300 and spread 1 came out with spread 0.9907, its moving variance off by
2.5e-3 of its size), where Keras's ops keep the two-pass variance.
"""

import keras
from keras import layers


def _fused_kernel_applies(layer, inputs, mask):
    if keras.backend.backend() != "tensorflow" or mask is not None or layer.synchronized or layer.renorm:
        return False
    if len(inputs.shape) != 4 or layer.axis not in (-1, 3) or not (layer.scale and layer.center):
        return False
    if keras.backend.standardize_dtype(inputs.dtype) not in ("float32", "float16", "bfloat16"):
        return False
    from keras_ffl.keras_private import tracing_for_xla

    return not tracing_for_xla()


@keras.saving.register_keras_serializable(package="keras_ffl")
class BatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` on TensorFlow's fused kernel (channels-last 4-D inputs
    in float32, float16 or bfloat16; anything else takes Keras's own path).

    Named as Keras's class on purpose: a ``.weights.h5`` file addresses each layer by its
    class name (``batch_normalization_3``), so weights, checkpoints and zoo files written with
    Keras's layer load into this one and back.

    Within float32 rounding of Keras's layer (outputs, gradients, moving statistics); measured in
    ``tests/test_batch_norm.py``. ``python -m keras_ffl.bench`` shows what it saves."""

    def call(self, inputs, training=None, mask=None):
        if not _fused_kernel_applies(self, inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # Half-precision inputs stay half: the kernel computes its statistics in float32.
        gamma = tf.cast(self.gamma, "float32")
        beta = tf.cast(self.beta, "float32")
        if training and self.trainable:
            outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=tf.constant([], "float32"),
                variance=tf.constant([], "float32"), epsilon=self.epsilon, exponential_avg_factor=1.0,
                data_format="NHWC", is_training=True)
            # The kernel returns the variance with Bessel's correction (for cuDNN's running
            # average); Keras's moving average takes the biased one.
            count = tf.reduce_prod(tf.cast(tf.shape(inputs)[:-1], "float32"))
            variance = unbiased_variance * ((count - 1.0) / tf.maximum(count, 1.0))
            moving_mean = tf.cast(self.moving_mean, "float32")
            moving_variance = tf.cast(self.moving_variance, "float32")
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)
