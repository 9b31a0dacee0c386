"""DML's settings and facts (its model: ``dml.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting

UPDATE_ORDERS = ("synchronous", "sequential")


@dataclasses.dataclass(frozen=True)
class DMLOptions(MethodOptions):
    NAME = "dml"
    TITLE = "DML, deep mutual learning (Zhang et al. 2018): every network learns from the others' predictions"
    MODEL = "keras_ffl.methods.dml:DML"
    # The paper: T = 1 and no ramp-up.
    TEMPERATURE = 1.0
    RAMPUP_EPOCHS = 0
    QUICKSTART_FLAGFILE = "zoo/quickstart_dml_fashion_mnist.flags"

    update: str = setting("synchronous", "Update order: synchronous (one forward pass, the common re-implementation) "
                          "or sequential (the paper: update each network in turn, recomputing predictions).",
                          choices=UPDATE_ORDERS, old_flag="dml_update")

    def model_arguments(self, run, context):
        return dict(update=self.update)
