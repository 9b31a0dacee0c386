"""Methods by name.  Adding a method means adding one file and one line here (and its
capabilities in ``keras_ffl.specs.METHODS``)."""

import collections

from keras_ffl.methods.afd import AFD, afd_feature_optimizer, afd_options
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.dml import DML, dml_options
from keras_ffl.methods.ffcl import FFCL, ffcl_options, ffcl_warm_start
from keras_ffl.methods.ffl import FFL, ffl_options
from keras_ffl.methods.kd import OfflineKD, kd_options
from keras_ffl.methods.one import ONE, one_options
from keras_ffl.methods.vanilla import Vanilla, vanilla_options

#: ``cls``: the model class; ``options(config)``: its own keyword arguments;
#: ``compile_extras(config, steps_per_epoch)``: extra ``compile`` arguments (other optimisers);
#: ``warm_start(model, config)``: what training loads before its first step (FFCL's frozen
#: pre-trained copies); evaluation, zoo and export get everything from the run's weights.
Method = collections.namedtuple("Method", ["cls", "options", "compile_extras", "warm_start"], defaults=[None, None])


def _afd_extras(config, steps_per_epoch):
    if config.afd_mode == "kd":
        return {}
    return {"feature_optimizer": afd_feature_optimizer(config, steps_per_epoch)}


METHODS = {
    "ffl": Method(FFL, ffl_options),
    "dml": Method(DML, dml_options),
    "one": Method(ONE, one_options),
    "afd": Method(AFD, afd_options, _afd_extras),
    "ffcl": Method(FFCL, ffcl_options, warm_start=ffcl_warm_start),
    "vanilla": Method(Vanilla, vanilla_options),
    "kd": Method(OfflineKD, kd_options),
}

__all__ = ["OnlineDistiller", "FFL", "DML", "ONE", "AFD", "FFCL", "Vanilla", "OfflineKD", "METHODS", "Method"]
