"""Layers the methods and deployment share: FFL's fusion module and spatial adapter, and the
in-graph preprocessing of exported models."""

from keras_ffl.layers.fusion import FUSION_MODES, FusionModule, SpatialAdapter
from keras_ffl.layers.preprocessing import Standardize

__all__ = ["FUSION_MODES", "FusionModule", "SpatialAdapter", "Standardize"]
