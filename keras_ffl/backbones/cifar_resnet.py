"""CIFAR ResNet-(6n+2) with post-activation BasicBlocks, as in the FFL and ONE code.

Stem conv3x3 -> 16 + BN + ReLU; three stages of n blocks with 16/32/64 channels and
strides 1/2/2; 1x1 conv + BN projection when the shape changes; global average pool;
dense head.  BasicBlock at every depth: ONE's code switches to Bottleneck for depth
>= 44, which is deliberately not copied.

Shared-trunk split: stem and stages 1-2 are the trunk, stage 3 plus the head is a branch
(``split="stage2"``, ONE's); MCL-OKD shares the stem and stage 1 only (``split="stage1"``).
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, conv, dense_classifier


class PostActivationResNet(Backbone):
    """The BasicBlock both ResNet families share (PyTorch torchvision / FFL code layout)."""

    def block(self, x, filters, strides, prefix):
        shortcut = x
        y = conv(filters, 3, strides, name=f"{prefix}_conv1")(x)
        y = self.bn(f"{prefix}_bn1")(y)
        y = layers.ReLU(name=f"{prefix}_relu1")(y)
        y = conv(filters, 3, 1, name=f"{prefix}_conv2")(y)
        y = self.bn(f"{prefix}_bn2")(y)
        if strides != 1 or x.shape[-1] != filters:
            shortcut = conv(filters, 1, strides, name=f"{prefix}_proj_conv")(x)
            shortcut = self.bn(f"{prefix}_proj_bn")(shortcut)
        y = layers.Add(name=f"{prefix}_add")([y, shortcut])
        return layers.ReLU(name=f"{prefix}_out")(y)

    def classify(self, features, num_classes):
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        return dense_classifier(num_classes, features.shape[-1], name="classifier")(pooled)


class CifarResNet(PostActivationResNet):
    num_segments = 4  # stem, stage 1, stage 2, stage 3 + classifier
    #: ONE's split (the default) shares stages 1-2; MCL-OKD's shares stage 1 only.
    split_points = specs.split_points("resnet", (3, 2))

    def __init__(self, depth, sync_bn=False):
        super().__init__(sync_bn)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110...), got {depth}")
        self.depth = depth
        self.blocks_per_stage = (depth - 2) // 6
        self.name = f"resnet{depth}"

    def segment(self, x, index, num_classes):
        if index == 0:
            x = conv(16, 3, 1, name="stem_conv")(x)
            return layers.ReLU(name="stem_relu")(self.bn("stem_bn")(x))
        if index < 3:
            return self.stage(x, index, 16 * 2 ** (index - 1), 1 if index == 1 else 2)
        features = self.stage(x, 3, 64, 2)
        return self.classify(features, num_classes), features

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}
