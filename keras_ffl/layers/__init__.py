"""Layers the methods and deployment share: FFL's fusion module and spatial adapter, ONE's gate,
AFD's discriminator and transfer layer, the in-graph preprocessing of exported models, and
BatchNorm on TensorFlow's fused kernel.  All are backend-neutral (``keras.ops``; the BatchNorm
takes TensorFlow's kernel only there) and registered for ``.keras`` serialization."""

from keras_ffl.layers.adversarial import Discriminator, TransferLayer
from keras_ffl.layers.batch_norm import BatchNormalization
from keras_ffl.layers.fusion import FUSION_MODES, FusionModule, SpatialAdapter
from keras_ffl.layers.gate import Gate
from keras_ffl.layers.preprocessing import Standardize

__all__ = ["BatchNormalization", "Discriminator", "FUSION_MODES", "FusionModule", "Gate", "SpatialAdapter",
           "Standardize", "TransferLayer"]
