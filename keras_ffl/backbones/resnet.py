"""Four-stage ResNet-18/34 (He et al.) with the post-activation BasicBlock.

Stages of 64/128/256/512 channels with strides 1/2/2/2 and (2,2,2,2) or (3,4,6,3) blocks.
The stem follows the input size, as the CIFAR literature (FFCL, DML, KDCL) and
torchvision do:

* images under 64 px: conv3x3 -> 64, stride 1, BN, ReLU, no max-pool (the usual CIFAR
  adaptation of ResNet-18/34, e.g. kuangliu/pytorch-cifar);
* larger images: conv7x7 -> 64, stride 2, BN, ReLU, max-pool 3x3 stride 2 (ImageNet).

Shared-trunk split: the stem and stages 1-3 are the trunk, stage 4 plus the head is a
branch (its blocks are the last two of ResNet-18 and the last three of ResNet-34).
"""

from keras import layers

from keras_ffl.backbones.base import conv
from keras_ffl.backbones.cifar_resnet import PostActivationResNet
from keras_ffl.specs import RESNET4_BLOCKS

#: Inputs at least this tall get the ImageNet stem.
IMAGENET_STEM_MIN_SIZE = 64
WIDTHS = (64, 128, 256, 512)


class ResNet(PostActivationResNet):
    def __init__(self, depth, sync_bn=False):
        super().__init__(sync_bn)
        if depth not in RESNET4_BLOCKS:
            raise ValueError(f"four-stage ResNet depth must be one of {sorted(RESNET4_BLOCKS)}, got {depth}")
        self.depth = depth
        self.blocks = RESNET4_BLOCKS[depth]
        self.name = f"resnet{depth}"

    def stem(self, x):
        if x.shape[1] is not None and x.shape[1] >= IMAGENET_STEM_MIN_SIZE:
            x = conv(64, 7, 2, name="stem_conv")(x)
            x = layers.ReLU(name="stem_relu")(self.bn("stem_bn")(x))
            return layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        x = conv(64, 3, 1, name="stem_conv")(x)
        return layers.ReLU(name="stem_relu")(self.bn("stem_bn")(x))

    def trunk_layers(self, x):
        x = self.stem(x)
        for index in range(3):
            x = self.stage(x, index + 1, WIDTHS[index], 1 if index == 0 else 2, blocks=self.blocks[index])
        return x

    def head_layers(self, x, num_classes):
        features = self.stage(x, 4, WIDTHS[3], 2, blocks=self.blocks[3])
        return self.classify(features, num_classes), features

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}
