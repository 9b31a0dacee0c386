"""VGG-16 with BatchNorm for 32x32 images, as OKDDip, MCL-OKD and PCL build it.

Every conv is 3x3 with a bias, then BN and ReLU: ``[64, 64, M, 128, 128, M, 256 x 3, M,
512 x 3, M, 512 x 3, M]`` -> 512 x 1 x 1 -> the head.  Head ``vgg16``: ``Linear(512, C)``
(MCL-OKD; 14,774,436 parameters at 100 classes); ``vgg16_3fc``: PCL's
``Linear(512, 512)-ReLU-Dropout-Linear(512, 512)-ReLU-Dropout-Linear(512, C)`` with dropout 0,
``vgg16_3fc_dropout`` the same with OKDDip's dropout 0.5.  Init: convs Kaiming-normal
(fan_out), biases 0; linears N(0, 0.01), biases 0 (``vgg16_3fc_dropout``: PyTorch's default
linear bias, U(-1/sqrt(512), 1/sqrt(512)), which OKDDip's ``vgg_GL.py`` leaves alone).
(RepDistiller's ``vgg16_bn`` pools differently, its last block at 4x4; not this one.)

Splits: ``block4`` (the default: ONE/OKDDip/PCL share the first ten convs, 512 x 2 x 2; each
branch has the last 512 block and the head) and ``block3`` (MCL-OKD and DML: both 512 blocks
per branch).
"""

from keras import layers

from keras_ffl import specs
from keras_ffl.backbones.base import Backbone, conv_initializer, conv_layer
from keras_ffl.initializers import linear_normal, torch_bias

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def linear(units, name, bias_fan_in=None):
    """N(0, 0.01); bias 0, or PyTorch's default for ``bias_fan_in`` inputs where given."""
    bias = torch_bias(bias_fan_in) if bias_fan_in else "zeros"
    return layers.Dense(units, kernel_initializer=linear_normal(0.01), bias_initializer=bias, name=name)


class VGG16(Backbone):
    num_segments = 5
    split_points = specs.split_points("vgg", (4, 3))

    def __init__(self, head="linear", dropout=0.0, sync_bn=False):
        super().__init__(sync_bn)
        self.head, self.dropout = head, dropout
        # OKDDip's vgg_GL.py (the dropout head's source) zeroes no linear bias; MCL-OKD and PCL do.
        self.torch_default_bias = bool(dropout)
        self.name = "vgg16" if head == "linear" else ("vgg16_3fc_dropout" if dropout else "vgg16_3fc")

    def bias_fan_in(self, x):
        return x.shape[-1] if self.torch_default_bias else None

    def segment(self, x, index, num_classes):
        for j, filters in enumerate(BLOCKS[index]):
            x = conv_layer(filters, 3, name=f"block{index + 1}_conv{j}", use_bias=True,
                           initializer=conv_initializer())(x)
            x = layers.ReLU(name=f"block{index + 1}_relu{j}")(self.bn(f"block{index + 1}_bn{j}")(x))
        x = layers.MaxPooling2D(2, name=f"block{index + 1}_pool")(x)
        if index < 4:
            return x
        features = x
        y = layers.Flatten(name="flatten")(features)
        if self.head == "3fc":
            for k in (1, 2):
                y = layers.ReLU(name=f"fc{k}_relu")(linear(512, f"fc{k}", self.bias_fan_in(y))(y))
                y = layers.Dropout(self.dropout, name=f"fc{k}_dropout")(y)
        return linear(num_classes, "classifier", self.bias_fan_in(y))(y), features
