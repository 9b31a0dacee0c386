"""Four-stage ResNet-18/34 (He et al.) with the post-activation BasicBlock.

Stages of 64/128/256/512 channels with strides 1/2/2/2 and (2,2,2,2) or (3,4,6,3) blocks.
The stem follows the input size, as the CIFAR literature (FFCL, DML, KDCL) and
torchvision do:

* images under 64 px: conv3x3 -> 64, stride 1, BN, ReLU, no max-pool (the usual CIFAR
  adaptation of ResNet-18/34, e.g. kuangliu/pytorch-cifar);
* larger images: conv7x7 -> 64, stride 2, BN, ReLU, max-pool 3x3 stride 2 (ImageNet).

Shared-trunk split (FFL/ONE "case 1"): with the CIFAR stem the last stage is a branch
(stem and stages 1-3 shared), as the CIFAR networks split; with the ImageNet stem the last
two stages are branches (stem and stages 1-2 shared): "in ImageNet ... separate the last 2
blocks for giving more learning capacity in the same way as ONE" (paper 000, Sec. IV),
ONE's ImageNet ResNet duplicating layer3 and layer4.
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import conv
from keras_ffl.backbones.cifar_resnet import PostActivationResNet
from keras_ffl.specs import RESNET4_BLOCKS

#: Inputs at least this tall get the ImageNet stem.
IMAGENET_STEM_MIN_SIZE = 64
WIDTHS = (64, 128, 256, 512)


class ResNet(PostActivationResNet):
    num_segments = 5  # stem, stages 1-3, stage 4 + classifier
    #: CIFAR stem: stage 4 per branch (the default there); ImageNet stem: stages 3-4 per branch.
    split_points = specs.split_points("resnet4", (4, 3, 2))

    def __init__(self, depth, sync_bn=False):
        super().__init__(sync_bn)
        if depth not in RESNET4_BLOCKS:
            raise ValueError(f"four-stage ResNet depth must be one of {sorted(RESNET4_BLOCKS)}, got {depth}")
        self.depth = depth
        self.blocks = RESNET4_BLOCKS[depth]
        self.name = f"resnet{depth}"

    def default_split(self, input_shape):
        return "stage2" if self.imagenet_stem(input_shape) else "stage3"

    @staticmethod
    def imagenet_stem(input_shape):
        return input_shape is not None and input_shape[0] is not None and input_shape[0] >= IMAGENET_STEM_MIN_SIZE

    def input_shape_for(self, trunk_output_shape):
        # The trunk's channel count says where it stopped (ImageNet: after stage 2, 128 channels).
        return (IMAGENET_STEM_MIN_SIZE,) * 2 + (3,) if trunk_output_shape[-1] == WIDTHS[1] else None

    def segment(self, x, index, num_classes):
        if index == 0:
            if self.imagenet_stem(x.shape[1:]):
                x = conv(64, 7, 2, name="stem_conv")(x)
                x = layers.ReLU(name="stem_relu")(self.bn("stem_bn")(x))
                # PyTorch's MaxPool2d(3, 2, padding=1); after a ReLU zero padding never wins the max.
                x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
                return layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
            x = conv(64, 3, 1, name="stem_conv")(x)
            return layers.ReLU(name="stem_relu")(self.bn("stem_bn")(x))
        x = self.stage(x, index, WIDTHS[index - 1], 1 if index == 1 else 2, blocks=self.blocks[index - 1])
        return (self.classify(x, num_classes), x) if index == 4 else x

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}
