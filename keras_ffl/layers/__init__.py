from keras_ffl.layers.fusion import FUSION_MODES, FusionModule, SpatialAdapter  # noqa: F401
