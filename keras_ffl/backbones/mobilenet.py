"""MobileNetV2 for 32x32 images, RepDistiller's CIFAR variant (``mobile_half``: width 0.5,
812,836 parameters at 100 classes; ``mobilenetv2_w1`` is width 1.0, 2,353,060).

    conv1 3x3 stride 2, 3 -> 32w, BN, ReLU                                 16 x 16
    inverted residual groups (t, c, n, s): (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2)
                                           (6,96,3,1) (6,160,3,2) (6,320,1,1)   ... 2 x 2
    conv2 1x1 -> 1280, BN, ReLU                                           1280 x 2 x 2
    average pool -> Linear(1280, C)

Each inverted residual: 1x1 expansion (present even at t = 1), BN, ReLU, depthwise 3x3, BN,
ReLU, 1x1 projection, BN; identity added when stride 1 and channels equal.  ReLU, not ReLU6.
Stride-2 convolutions pad 1 on every side as PyTorch's.  Init: convs N(0, sqrt(2 / (k*k*out))),
linear N(0, 0.01), bias 0.  No branch version exists in the authors' code: the split is ours,
``group4`` (conv1 and groups 0-4 shared at 4 x 4; groups 5-6, conv2 and the classifier per
branch) by default, ``group2`` (the 8x8 -> 4x4 boundary) also offered.
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, torch_padding
from keras_ffl.initializers import kaiming_normal, linear_normal

GROUPS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(Backbone):
    num_segments = 8  # conv1, groups 0-5, group 6 + conv2 + classifier
    split_points = specs.split_points("mobilenet", (6, 4))

    def __init__(self, width=0.5, sync_bn=False):
        super().__init__(sync_bn)
        self.width = width
        self.name = "mobilenetv2" if width == 0.5 else f"mobilenetv2_w{width:g}"
        self.last_channels = 1280 if width <= 1.0 else int(1280 * width)

    def conv_bn(self, x, filters, kernel, strides, name, relu=True, depthwise=False):
        pad = torch_padding(kernel, strides)
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid" if pad else "same"
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, use_bias=False,
                                       depthwise_initializer=kaiming_normal(depthwise=True), name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                              kernel_initializer=kaiming_normal(), name=name)(x)
        x = self.bn(f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def inverted_residual(self, x, filters, strides, expansion, prefix):
        hidden = x.shape[-1] * expansion
        y = self.conv_bn(x, hidden, 1, 1, f"{prefix}_expand")
        y = self.conv_bn(y, hidden, 3, strides, f"{prefix}_depthwise", depthwise=True)
        y = self.conv_bn(y, filters, 1, 1, f"{prefix}_project", relu=False)
        if strides == 1 and x.shape[-1] == filters:
            y = layers.Add(name=f"{prefix}_add")([x, y])
        return y

    def segment(self, x, index, num_classes):
        if index == 0:
            return self.conv_bn(x, int(32 * self.width), 3, 2, "conv1")
        for g in ([index - 1] if index < 7 else [6]):
            expansion, channels, blocks, strides = GROUPS[g]
            for b in range(blocks):
                x = self.inverted_residual(x, int(channels * self.width), strides if b == 0 else 1, expansion,
                                           f"group{g}_block{b}")
        if index < 7:
            return x
        features = self.conv_bn(x, self.last_channels, 1, 1, "conv2")
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        logits = layers.Dense(num_classes, kernel_initializer=linear_normal(0.01), bias_initializer="zeros",
                              name="classifier")(pooled)
        return logits, features
