"""Layers the methods and deployment share: FFL's fusion module and spatial adapter, ONE's gate,
AFD's discriminator and transfer layer, and the in-graph preprocessing of exported models.
All are backend-neutral (``keras.ops``) and registered for ``.keras`` serialization."""

from keras_ffl.layers.adversarial import Discriminator, TransferLayer
from keras_ffl.layers.fusion import FUSION_MODES, FusionModule, SpatialAdapter
from keras_ffl.layers.gate import Gate
from keras_ffl.layers.preprocessing import Standardize

__all__ = ["Discriminator", "FUSION_MODES", "FusionModule", "Gate", "SpatialAdapter", "Standardize", "TransferLayer"]
