"""Layers specific to the methods: FFL's fusion module and spatial adapter."""

from keras_ffl.layers.fusion import FUSION_MODES, FusionModule, SpatialAdapter

__all__ = ["FUSION_MODES", "FusionModule", "SpatialAdapter"]
