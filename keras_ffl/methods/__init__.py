"""Methods by name.  Adding a method means adding one file and one line here."""

from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.ffl import FFL, ffl_options

#: name -> (model class, function mapping a Config to the class's own keyword arguments)
METHODS = {"ffl": (FFL, ffl_options)}

__all__ = ["OnlineDistiller", "FFL", "METHODS"]
