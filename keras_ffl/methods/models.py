"""Imports every registered method's model (so each is registered with Keras's serialization)."""

from keras_ffl.methods import registry

MODELS = {name: registry.model_class(name) for name in registry.NAMES}
