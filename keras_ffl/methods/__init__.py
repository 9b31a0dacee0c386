"""Methods by name.  Adding a method means adding one file and one line here (and its
capabilities in ``keras_ffl.specs.METHODS``)."""

from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.dml import DML, dml_options
from keras_ffl.methods.ffl import FFL, ffl_options
from keras_ffl.methods.one import ONE, one_options
from keras_ffl.methods.vanilla import Vanilla, vanilla_options

#: name -> (model class, function mapping a Config to the class's own keyword arguments)
METHODS = {
    "ffl": (FFL, ffl_options),
    "dml": (DML, dml_options),
    "one": (ONE, one_options),
    "vanilla": (Vanilla, vanilla_options),
}

__all__ = ["OnlineDistiller", "FFL", "DML", "ONE", "Vanilla", "METHODS"]
