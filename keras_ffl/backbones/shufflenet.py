"""ShuffleNetV2 1.0x for 32x32 images (RepDistiller's ``ShuffleV2``, the peers of the FFCL and
KDCL comparisons): 1,355,528 parameters at 100 classes.

    conv1 1x1 3->24, BN, ReLU (stride 1, no max-pool)       24 x 32 x 32
    layer1: DownBlock(24->116) + 3 BasicBlocks             116 x 16 x 16
    layer2: DownBlock(116->232) + 7 BasicBlocks            232 x  8 x  8
    layer3: DownBlock(232->464) + 3 BasicBlocks            464 x  4 x  4
    conv2 1x1 464->1024, BN, ReLU                         1024 x  4 x  4
    average pool -> Linear(1024, C)

A BasicBlock passes the first half of its channels through and transforms the second (1x1,
BN, ReLU, depthwise 3x3, BN, 1x1, BN, ReLU), then shuffles two groups; a DownBlock transforms
both halves at stride 2.  Depthwise stride-2 convolutions pad 1 on every side as PyTorch's.
No custom init: PyTorch's defaults (>= 1.0; a depthwise 3x3 kernel's fan_in is 9).  No branch
version exists in the authors' code: the split is ours (``layer2``, by analogy with ResNet's:
the last stage, conv2 and the classifier per branch; ``layer1`` also offered).
"""

import keras
from keras import layers, ops

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, dense_classifier, torch_padding
from keras_ffl.initializers import torch_default

STAGES = ((116, 3), (232, 7), (464, 3))


@keras.saving.register_keras_serializable(package="keras_ffl")
class ChannelShuffle(layers.Layer):
    """ShuffleNet's channel shuffle in channels-last layout: (..., g, C/g) -> (..., C/g, g)."""

    def __init__(self, groups=2, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        x = ops.reshape(x, (-1, height, width, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, height, width, channels))

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="keras_ffl")
class ChannelSlice(layers.Layer):
    """Channels ``[start, stop)`` of a feature map."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x):
        return x[..., self.start:self.stop]

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


class ShuffleNetV2(Backbone):
    name = "shufflenetv2"
    num_segments = 4
    split_points = specs.split_points("shufflenet", (3, 2))

    def conv(self, x, filters, name, relu=True):
        x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=torch_default(), name=name)(x)
        x = self.bn(f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def depthwise(self, x, strides, name):
        pad = torch_padding(3, strides)
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        x = layers.DepthwiseConv2D(3, strides=strides, padding="valid" if pad else "same", use_bias=False,
                                   depthwise_initializer=torch_default(depthwise=True), name=name)(x)
        return self.bn(f"{name}_bn")(x)

    def basic_block(self, x, prefix):
        half = x.shape[-1] // 2
        kept = ChannelSlice(0, half, name=f"{prefix}_split0")(x)
        y = ChannelSlice(half, x.shape[-1], name=f"{prefix}_split1")(x)
        y = self.conv(y, half, f"{prefix}_conv1")
        y = self.depthwise(y, 1, f"{prefix}_conv2")
        y = self.conv(y, half, f"{prefix}_conv3")
        y = layers.Concatenate(name=f"{prefix}_concat")([kept, y])
        return ChannelShuffle(2, name=f"{prefix}_shuffle")(y)

    def down_block(self, x, filters, prefix):
        mid = filters // 2
        left = self.depthwise(x, 2, f"{prefix}_conv1")
        left = self.conv(left, mid, f"{prefix}_conv2")
        right = self.conv(x, mid, f"{prefix}_conv3")
        right = self.depthwise(right, 2, f"{prefix}_conv4")
        right = self.conv(right, mid, f"{prefix}_conv5")
        y = layers.Concatenate(name=f"{prefix}_concat")([left, right])
        return ChannelShuffle(2, name=f"{prefix}_shuffle")(y)

    def segment(self, x, index, num_classes):
        if index == 0:
            return self.conv(x, 24, "conv1")
        filters, blocks = STAGES[index - 1]
        x = self.down_block(x, filters, f"layer{index}_down")
        for b in range(blocks):
            x = self.basic_block(x, f"layer{index}_block{b}")
        if index < 3:
            return x
        features = self.conv(x, 1024, "conv2")
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        return dense_classifier(num_classes, features.shape[-1], name="classifier")(pooled), features
