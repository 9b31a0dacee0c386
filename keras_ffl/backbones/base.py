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

import keras
from keras import layers

from keras_ffl import initializers


def conv_initializer():
    """He-normal, fan_out, untruncated: ``nn.init.kaiming_normal_(mode='fan_out')``."""
    return initializers.kaiming_normal("fan_out")


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

    ``sync=True`` computes statistics over the global batch across replicas.  On TensorFlow the
    layer runs the fused kernel (``keras_ffl.layers.BatchNormalization``: the same function, 1.2-1.4x
    faster training on a CPU).
    """
    from keras_ffl.layers.batch_norm import BatchNormalization  # keras_ffl.layers imports this module

    return BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync, name=name)


def dense_classifier(num_classes, fan_in, name, zero_bias=False):
    """``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    (``zero_bias``: the bias zeroed, as RepDistiller's WRN and the DenseNet code do)."""
    bias = "zeros" if zero_bias else initializers.torch_bias(fan_in)
    return layers.Dense(num_classes, kernel_initializer=initializers.torch_default(), bias_initializer=bias, name=name)


#: Name of the identity layer on the trunk/head boundary of a whole network.
MIDDLE_LAYER = "middle"


class Backbone:
    """A network as an ordered list of segments with named split points.

    Subclasses implement ``segment(x, index, num_classes)`` for ``index`` in
    ``range(num_segments)``; the last segment returns ``(logits, last feature map)``.
    ``split_points`` names the boundaries a network may be split at (``{"stage2": 3}``: after
    segment 2); ``default_split`` is where shared-trunk methods split by default (ONE's split:
    the last stage and the classifier are per branch), and where a whole network puts the
    ``middle`` identity layer FFCL fuses.

    * ``build_network``: the whole network, image -> [logits, last feature map];
    * ``build_trunk`` / ``build_head``: the two sides of a split (any named split point);
    * ``build_segment``: the segments between two split points (hierarchical sharing).
    """

    name = "backbone"
    blocks_per_stage = 1
    num_segments = 1
    split_points = {}

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

    def segment(self, x, index, num_classes):
        raise NotImplementedError

    def default_split(self, input_shape):
        return next(iter(self.split_points))

    def split_index(self, split, input_shape):
        split = split or self.default_split(input_shape)
        if split not in self.split_points:
            raise ValueError(f"{self.name} splits at {', '.join(self.split_points)}, not '{split}'")
        return self.split_points[split]

    def apply(self, x, start, end, num_classes):
        for index in range(start, end):
            x = self.segment(x, index, num_classes)
        return x

    def build_network(self, input_shape, num_classes, name):
        inputs = keras.Input(shape=input_shape, name="images")
        split = self.split_index(None, input_shape)
        middle = layers.Identity(name=MIDDLE_LAYER)(self.apply(inputs, 0, split, num_classes))
        logits, features = self.apply(middle, split, self.num_segments, num_classes)
        return keras.Model(inputs, [logits, features], name=name)

    def build_trunk(self, input_shape, name="trunk", split=None):
        inputs = keras.Input(shape=input_shape, name="images")
        return keras.Model(inputs, self.apply(inputs, 0, self.split_index(split, input_shape), None), name=name)

    def build_head(self, trunk_output_shape, num_classes, name, split=None, input_shape=None):
        inputs = keras.Input(shape=trunk_output_shape, name="trunk_features")
        start = self.split_index(split, input_shape or self.input_shape_for(trunk_output_shape))
        logits, features = self.apply(inputs, start, self.num_segments, num_classes)
        return keras.Model(inputs, [logits, features], name=name)

    def build_segment(self, input_shape, start, end, name, image_shape):
        """The segments from split point ``start`` to split point ``end`` (names), as a model of
        the feature map at ``start``."""
        inputs = keras.Input(shape=input_shape, name="features")
        outputs = self.apply(inputs, self.split_index(start, image_shape), self.split_index(end, image_shape), None)
        return keras.Model(inputs, outputs, name=name)

    def input_shape_for(self, trunk_output_shape):
        """The image shape a trunk output comes from, where the default split depends on it
        (only ResNet-18/34's stem does; None elsewhere)."""
        return None

    def get_config(self):
        return {"name": self.name, "sync_bn": self.sync_bn}
