"""ONE's gate (Lan et al., NeurIPS 2018): how much each branch weighs in the teacher."""

import keras
from keras import layers, ops

from keras_ffl import initializers
from keras_ffl.backbones.base import batch_norm


@keras.saving.register_keras_serializable(package="keras_ffl")
class Gate(layers.Layer):
    """Global average pool -> dense(K) -> BN -> ReLU -> softmax over branches, as in the
    authors' code.  The dense layer's initialisers default to ``nn.Linear``'s weight and a zero
    bias; ONE passes its network's linear rule (``initializers.linear_like``: with the official
    ResNet, ``nn.Linear``'s default weight and bias)."""

    def __init__(self, num_branches, sync_bn=False, kernel_initializer=None, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_branches, self.sync_bn = num_branches, sync_bn
        self.dense = layers.Dense(
            num_branches,
            kernel_initializer=kernel_initializer or initializers.torch_default(),
            bias_initializer=bias_initializer,
            name="dense",
        )
        self.bn = batch_norm("bn", sync_bn)

    def call(self, trunk_features, training=False):
        pooled = ops.mean(trunk_features, axis=(1, 2))
        return ops.softmax(ops.relu(self.bn(self.dense(pooled), training=training)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_branches": self.num_branches, "sync_bn": self.sync_bn,
                "kernel_initializer": keras.initializers.serialize(self.dense.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.dense.bias_initializer)}
