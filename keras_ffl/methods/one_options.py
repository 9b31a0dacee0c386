"""ONE's settings and facts (its model: ``one.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions


@dataclasses.dataclass(frozen=True)
class ONEOptions(MethodOptions):
    NAME = "one"
    TITLE = "ONE, on-the-fly native ensemble (Lan et al. 2018): gated branches of one trunk teach each branch"
    MODEL = "keras_ffl.methods.one:ONE"
    TOPOLOGIES = ("shared",)
    SAME_ARCHITECTURE = True
    QUICKSTART_FLAGFILE = "zoo/quickstart_one_fashion_mnist.flags"
    SHORT_BUDGET_FLAGS = ("--rampup_epochs=1",)

    def model_arguments(self, run, context):
        return dict(sync_bn=context.sync_bn)
