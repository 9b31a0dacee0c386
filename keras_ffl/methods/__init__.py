"""Methods by name.  Adding a method means adding one file and one line here (and its
capabilities in ``keras_ffl.specs.METHODS``; how a Config becomes its arguments is in
``keras_ffl.build``)."""

from keras_ffl.methods.afd import AFD
from keras_ffl.methods.base import Gradient, OnlineDistiller, Update
from keras_ffl.methods.cl_ilr import CLILR
from keras_ffl.methods.dml import DML
from keras_ffl.methods.ffcl import FFCL
from keras_ffl.methods.ffl import FFL
from keras_ffl.methods.kd import OfflineKD
from keras_ffl.methods.kdcl import KDCL
from keras_ffl.methods.mcl_okd import MCLOKD
from keras_ffl.methods.okddip import OKDDip
from keras_ffl.methods.one import ONE
from keras_ffl.methods.pcl import PCL
from keras_ffl.methods.vanilla import Vanilla

METHODS = {
    "ffl": FFL,
    "dml": DML,
    "one": ONE,
    "afd": AFD,
    "ffcl": FFCL,
    "vanilla": Vanilla,
    "kd": OfflineKD,
    "cl_ilr": CLILR,
    "okddip": OKDDip,
    "kdcl": KDCL,
    "mcl_okd": MCLOKD,
    "pcl": PCL,
}

__all__ = ["OnlineDistiller", "Gradient", "Update", "FFL", "DML", "ONE", "AFD", "FFCL", "Vanilla", "OfflineKD", "CLILR",
           "OKDDip", "KDCL", "MCLOKD", "PCL", "METHODS"]
