"""FFL's fusion module (paper 000, Fig. 2) and the spatial adapter it needs for mixed nets."""

import keras
from keras import layers, ops

from keras_ffl import initializers
from keras_ffl.backbones.base import batch_norm, conv_layer, dense_classifier, torch_padding
from keras_ffl.methods.ffl_options import FUSION_MODES  # the one declaration of the modes


@keras.saving.register_keras_serializable(package="keras_ffl")
class SpatialAdapter(layers.Layer):
    """Strided conv-BN-ReLU that brings a larger feature map down to the fusion size.

    The paper only says "a simple convolution operation ... similar to the regressor in
    FitNets"; this is a 3x3 conv with stride ``factor`` (padded 1 on every side, as PyTorch
    would) that keeps the channel count.
    """

    def __init__(self, channels, factor, sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.factor, self.sync_bn = channels, factor, sync_bn
        pad = torch_padding(3, factor)
        self.pad = layers.ZeroPadding2D(pad, name="pad") if pad else None
        self.conv = conv_layer(channels, 3, strides=factor, name="conv", padding="valid" if pad else "same")
        self.bn = batch_norm("bn", sync_bn)

    def call(self, x, training=False):
        if self.pad is not None:
            x = self.pad(x)
        return ops.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "factor": self.factor, "sync_bn": self.sync_bn}


@keras.saving.register_keras_serializable(package="keras_ffl")
class FusionModule(layers.Layer):
    """Concatenate feature maps -> depthwise 3x3 -> BN -> ReLU -> 1x1 to N -> BN -> ReLU -> pool -> dense.

    ``mode="average"`` is the paper's ablation case B (DualNet-style): the maps are averaged
    element-wise instead, then pooled and classified; it needs equal channel counts.

    Called on a list of feature maps, returns ``(fused_logits, fused_feature_map)``.
    """

    def __init__(self, num_classes, channels, mode="module", sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got '{mode}'")
        self.num_classes, self.channels, self.mode, self.sync_bn = num_classes, channels, mode, sync_bn
        self.adapters = {}

    def build(self, input_shapes):
        sizes = [(s[1], s[2]) for s in input_shapes]
        target = min(sizes)
        for k, (size, shape) in enumerate(zip(sizes, input_shapes)):
            if size == target:
                continue
            factor = size[0] // target[0]
            if size[0] % target[0] or size[1] % target[1] or size[1] // target[1] != factor:
                raise ValueError(
                    f"feature map {k} is {size[0]}x{size[1]} and cannot be strided down to "
                    f"{target[0]}x{target[1]}: sizes must differ by an integer factor"
                )
            self.adapters[str(k)] = SpatialAdapter(shape[-1], factor, self.sync_bn, name=f"adapter{k}")
        channels = [s[-1] for s in input_shapes]
        if self.mode == "average":
            if len(set(channels)) != 1:
                raise ValueError(f"fusion mode 'average' needs equal channel counts, got {channels}")
            fused_channels = channels[0]
        else:
            # The authors' Fusion_module draws it as every conv: N(0, sqrt(2 / (9 * out_channels))).
            self.depthwise = layers.DepthwiseConv2D(
                3, padding="same", use_bias=False, depthwise_initializer=initializers.kaiming_normal(depthwise=True),
                name="depthwise"
            )
            self.depthwise_bn = batch_norm("depthwise_bn", self.sync_bn)
            self.pointwise = conv_layer(self.channels, 1, name="pointwise")
            self.pointwise_bn = batch_norm("pointwise_bn", self.sync_bn)
            fused_channels = self.channels
        self.classifier = dense_classifier(self.num_classes, fused_channels, name="classifier")

    def call(self, feature_maps, training=False):
        maps = [
            self.adapters[str(k)](f, training=training) if str(k) in self.adapters else f
            for k, f in enumerate(feature_maps)
        ]
        if self.mode == "average":
            fused = ops.mean(ops.stack(maps, axis=0), axis=0)
        else:
            x = ops.concatenate(maps, axis=-1)
            x = ops.relu(self.depthwise_bn(self.depthwise(x), training=training))
            fused = ops.relu(self.pointwise_bn(self.pointwise(x), training=training))
        logits = self.classifier(ops.mean(fused, axis=(1, 2)))
        return logits, fused

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "mode": self.mode,
            "sync_bn": self.sync_bn,
        }
