"""Wide ResNet WRN-d-k, the KD community's reference definition (RepDistiller style).

Pre-activation blocks; widths 16, 16k, 32k, 64k; n = (d-4)/6 blocks per stage; final
BN-ReLU; global average pool; dense head with zero bias.  When a block changes the
channel count, its pre-activation output also feeds the 1x1 projection shortcut.

Shared-trunk split: the stem conv and stages 1-2 are the trunk; stage 3, the final
BN-ReLU and the head are a branch.  The last feature map is the final BN-ReLU output.
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, conv, dense_classifier


class WideResNet(Backbone):
    num_segments = 4  # stem, stage 1, stage 2, stage 3 + final BN-ReLU + classifier
    split_points = specs.split_points("wrn", (3, 2))

    def __init__(self, depth, width, sync_bn=False):
        super().__init__(sync_bn)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width factor must be >= 1, got {width}")
        self.depth, self.width = depth, width
        self.blocks_per_stage = (depth - 4) // 6
        self.name = f"wrn{depth}_{width}"

    def block(self, x, filters, strides, prefix):
        equal_in_out = x.shape[-1] == filters
        pre = layers.ReLU(name=f"{prefix}_relu1")(self.bn(f"{prefix}_bn1")(x))
        y = conv(filters, 3, strides, name=f"{prefix}_conv1")(pre)
        y = layers.ReLU(name=f"{prefix}_relu2")(self.bn(f"{prefix}_bn2")(y))
        y = conv(filters, 3, 1, name=f"{prefix}_conv2")(y)
        shortcut = x if equal_in_out else conv(filters, 1, strides, name=f"{prefix}_proj_conv")(pre)
        return layers.Add(name=f"{prefix}_add")([y, shortcut])

    def segment(self, x, index, num_classes):
        if index == 0:
            return conv(16, 3, 1, name="stem_conv")(x)
        if index < 3:
            return self.stage(x, index, 16 * self.width * 2 ** (index - 1), 1 if index == 1 else 2)
        x = self.stage(x, 3, 64 * self.width, 2)
        features = layers.ReLU(name="final_relu")(self.bn("final_bn")(x))
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)
        logits = dense_classifier(num_classes, features.shape[-1], name="classifier", zero_bias=True)(pooled)
        return logits, features

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "width": self.width}
