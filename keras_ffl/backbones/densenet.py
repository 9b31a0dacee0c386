"""DenseNet-40-12 as the online-distillation papers use it (OKDDip, MCL-OKD, PCL:
``densenetd40k12``): the **BC** variant, 0.19M parameters at 100 classes, not Huang et al.'s
1.0M DenseNet-40.

    conv0 3x3 3->24 (no BN/ReLU after)                               24 x 32 x 32
    block1: 6 x [BN-ReLU-Conv1x1(->48)-BN-ReLU-Conv3x3(48->12)], concat     96 x 32 x 32
    trans1: BN-ReLU-Conv1x1(96->48)-AvgPool2                          48 x 16 x 16
    block2, trans2 (120->60)                                          60 x  8 x  8
    block3                                                           132 x  8 x  8
    BN-ReLU-GAP -> 132 -> FC(132->C)

Growth 12, bottleneck 4 x 12, compression 0.5, no bias, Kaiming-normal (fan_in) convs, the
classifier's bias zeroed (MCL-OKD's ``densenet.py``, PCL's).
Splits: ``trans2`` (the default: ONE/OKDDip/PCL share conv0..trans2, each branch has block3
and the classifier) and ``trans1`` (MCL-OKD and DML's split: block2 onwards per branch).
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, conv, dense_classifier
from keras_ffl.initializers import kaiming_normal

GROWTH, BOTTLENECK, COMPRESSION, LAYERS_PER_BLOCK = 12, 4, 0.5, 6


def fan_in_normal():
    """``nn.init.kaiming_normal_(w)`` (fan_in, gain sqrt(2))."""
    return kaiming_normal("fan_in")


class DenseNetBC(Backbone):
    name = "densenet40_12"
    num_segments = 4
    split_points = specs.split_points("densenet", (3, 2))

    def __init__(self, sync_bn=False):
        super().__init__(sync_bn)

    def dense_layer(self, x, prefix):
        y = layers.ReLU(name=f"{prefix}_relu1")(self.bn(f"{prefix}_bn1")(x))
        y = conv(BOTTLENECK * GROWTH, 1, name=f"{prefix}_conv1", initializer=fan_in_normal())(y)
        y = layers.ReLU(name=f"{prefix}_relu2")(self.bn(f"{prefix}_bn2")(y))
        y = conv(GROWTH, 3, name=f"{prefix}_conv2", initializer=fan_in_normal())(y)
        return layers.Concatenate(name=f"{prefix}_concat")([x, y])

    def dense_block(self, x, index):
        for layer in range(LAYERS_PER_BLOCK):
            x = self.dense_layer(x, f"block{index}_layer{layer}")
        return x

    def transition(self, x, index):
        y = layers.ReLU(name=f"trans{index}_relu")(self.bn(f"trans{index}_bn")(x))
        y = conv(int(x.shape[-1] * COMPRESSION), 1, name=f"trans{index}_conv", initializer=fan_in_normal())(y)
        return layers.AveragePooling2D(2, name=f"trans{index}_pool")(y)

    def segment(self, x, index, num_classes):
        if index == 0:
            return conv(2 * GROWTH, 3, name="conv0", initializer=fan_in_normal())(x)
        x = self.dense_block(x, index)
        if index < 3:
            return self.transition(x, index)
        features = layers.ReLU(name="final_relu")(self.bn("final_bn")(x))
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        return dense_classifier(num_classes, features.shape[-1], name="classifier", zero_bias=True)(pooled), features
