"""keras_ffl: online mutual knowledge distillation for Keras 3.

The package import is light (no TensorFlow) so that the command line can reject bad
flags instantly; the model-building API is imported on first use::

    from keras_ffl.build import build_model, build_datasets
    from keras_ffl.methods import FFL
"""

__version__ = "0.1.0"
