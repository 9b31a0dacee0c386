"""What every backbone shares: PyTorch-equivalent initialisers and the trunk/head split.

A backbone knows nothing of distillation.  It builds three kinds of functional model:

* ``build_network``: the whole network, image -> [logits, last feature map];
* ``build_trunk``: the part that branches share (stem and early stages), image -> features;
* ``build_head``: the duplicable last part, trunk features -> [logits, last feature map].

In a whole network the trunk's output passes through an identity layer named
``MIDDLE_LAYER``: the middle-layer feature map FFCL fuses, found without knowing the
architecture.

Every layer gets a deterministic name so that weights saved in one process load in
another regardless of how many layers were created before.
"""

import math

import keras
from keras import layers


def conv_initializer():
    """He-normal, fan_out, untruncated: ``nn.init.kaiming_normal_(mode='fan_out')``."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def torch_padding(kernel_size, strides):
    """The symmetric zero padding PyTorch's ``padding=k//2`` gives a strided convolution or
    pool, or None where Keras's ``"same"`` already pads exactly that.

    At stride 1 ``"same"`` pads ``k//2`` on every side, as PyTorch does.  At stride 2 on an
    even-sized input it pads only the bottom and the right, which shifts the sampling grid by
    one pixel against the PyTorch reference (measured: logits differ by up to 14 on a
    ResNet-32 with identical weights); such layers pad explicitly, then run ``"valid"``.
    """
    return kernel_size // 2 if strides > 1 and kernel_size > 1 else None


def conv_layer(filters, kernel_size, strides=1, name=None, padding="same", use_bias=False, initializer=None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=initializer or conv_initializer(),
        name=name,
    )


def conv(filters, kernel_size, strides=1, name=None, use_bias=False, initializer=None):
    """``x -> conv(x)`` padded as PyTorch's ``Conv2d(..., padding=kernel_size // 2)``: explicit
    ``ZeroPadding2D`` (named ``<name>_pad``) then a valid convolution where they differ."""
    pad = torch_padding(kernel_size, strides)
    layer = conv_layer(filters, kernel_size, strides, name, "valid" if pad else "same", use_bias, initializer)
    if pad is None:
        return layer
    padding = layers.ZeroPadding2D(pad, name=f"{name}_pad")
    return lambda x: layer(padding(x))


def batch_norm(name, sync=False):
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5).

    ``sync=True`` computes statistics over the global batch across replicas.
    """
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync, name=name)


def dense_classifier(num_classes, fan_in, name, zero_bias=False):
    """``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    bias_init = "zeros" if zero_bias else keras.initializers.RandomUniform(-bound, bound)
    return layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=bias_init,
        name=name,
    )


#: Name of the identity layer on the trunk/head boundary of a whole network.
MIDDLE_LAYER = "middle"


class Backbone:
    """Base class: subclasses implement ``block``, ``trunk_layers`` and ``head_layers``."""

    name = "backbone"
    blocks_per_stage = 1

    def __init__(self, sync_bn=False):
        self.sync_bn = sync_bn

    def bn(self, name):
        return batch_norm(name, self.sync_bn)

    def block(self, x, filters, strides, prefix):
        raise NotImplementedError

    def stage(self, x, index, filters, strides, blocks=None):
        """``blocks`` (default ``blocks_per_stage``) blocks; the first one carries the stride."""
        for b in range(blocks or self.blocks_per_stage):
            x = self.block(x, filters, strides if b == 0 else 1, f"stage{index}_block{b}")
        return x

    def trunk_layers(self, x):
        raise NotImplementedError

    def head_layers(self, x, num_classes):
        """Returns ``(logits, feature_map)``."""
        raise NotImplementedError

    def build_network(self, input_shape, num_classes, name):
        inputs = keras.Input(shape=input_shape, name="images")
        middle = layers.Identity(name=MIDDLE_LAYER)(self.trunk_layers(inputs))
        logits, features = self.head_layers(middle, num_classes)
        return keras.Model(inputs, [logits, features], name=name)

    def build_trunk(self, input_shape, name="trunk"):
        inputs = keras.Input(shape=input_shape, name="images")
        return keras.Model(inputs, self.trunk_layers(inputs), name=name)

    def build_head(self, trunk_output_shape, num_classes, name):
        inputs = keras.Input(shape=trunk_output_shape, name="trunk_features")
        logits, features = self.head_layers(inputs, num_classes)
        return keras.Model(inputs, [logits, features], name=name)

    def get_config(self):
        return {"name": self.name, "sync_bn": self.sync_bn}
