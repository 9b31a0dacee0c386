"""In-graph preprocessing for deployment: raw pixels in, the training pipeline's input out."""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_ffl")
class Standardize(layers.Layer):
    """``(pixels / 255 - mean) / std`` per channel, as ``keras_ffl.data.augment.normalize``.

    Constants, not variables: an exported sub-network carries exactly its own weights.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def call(self, pixels):
        pixels = ops.cast(pixels, "float32")
        return (pixels / 255.0 - ops.convert_to_tensor(self.mean)) / ops.convert_to_tensor(self.std)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}
