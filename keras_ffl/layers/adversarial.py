"""AFD's discriminator and transfer layer (paper 003, Sec. 3.2)."""

import keras
from keras import layers, ops

from keras_ffl.backbones.base import batch_norm, conv_initializer, conv_layer, torch_padding
from keras_ffl.losses import as_float


@keras.saving.register_keras_serializable(package="keras_ffl")
class Discriminator(layers.Layer):
    """Conv - BN - LeakyReLU - Conv - Sigmoid: a feature map to one probability of "real".

    The paper gives no sizes.  Here: a 3x3 stride-2 conv halving the channels (padded 1 on
    every side, as a PyTorch ``Conv2d(padding=1)``), BN, LeakyReLU (slope 0.2, the
    LSGAN/DCGAN default), then a valid conv whose kernel covers the whole remaining map and
    outputs one channel, so any spatial size reduces to one scalar.  No code exists to take the
    initialisation from: both convs are drawn as the backbones' convs, N(0, sqrt(2 / (kh*kw*out))),
    the second's bias 0.
    """

    def __init__(self, sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.sync_bn = sync_bn

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        self.pad = layers.ZeroPadding2D(torch_padding(3, 2), name="pad")
        self.conv1 = conv_layer(max(channels // 2, 1), 3, strides=2, name="conv1", padding="valid")
        self.bn = batch_norm("bn", self.sync_bn)
        remaining = ((height - 1) // 2 + 1, (width - 1) // 2 + 1)
        self.conv2 = layers.Conv2D(1, remaining, padding="valid", kernel_initializer=conv_initializer(), name="conv2")
        self.conv2.build((None, *remaining, max(channels // 2, 1)))

    def call(self, feature_map, training=False):
        x = ops.leaky_relu(self.bn(self.conv1(self.pad(feature_map)), training=training), negative_slope=0.2)
        # conv2's kernel covers the whole map, so the conv is one contraction; written so, because
        # PyTorch's float64 CPU convolution cannot take the gradient of this one-output kernel in
        # the channels-last layout Keras gives it ("slow_conv2d: grad_weight must be contiguous").
        logit = ops.einsum("bhwc,hwco->bo", x, ops.cast(self.conv2.kernel, x.dtype)) + ops.cast(self.conv2.bias,
                                                                                                   x.dtype)
        return ops.reshape(ops.sigmoid(as_float(logit)), (-1,))

    def get_config(self):
        return {**super().get_config(), "sync_bn": self.sync_bn}


@keras.saving.register_keras_serializable(package="keras_ffl")
class TransferLayer(layers.Layer):
    """Conv - BN - ReLU bringing a feature map to ``channels`` (used when channel counts differ)."""

    def __init__(self, channels, sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.sync_bn = channels, sync_bn
        self.conv = conv_layer(channels, 1, name="conv")
        self.bn = batch_norm("bn", sync_bn)

    def call(self, feature_map, training=False):
        return ops.relu(self.bn(self.conv(feature_map), training=training))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "sync_bn": self.sync_bn}
