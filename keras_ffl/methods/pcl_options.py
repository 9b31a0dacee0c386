"""PCL's settings and facts (its model: ``pcl.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting


@dataclasses.dataclass(frozen=True)
class PCLOptions(MethodOptions):
    NAME = "pcl"
    TITLE = "PCL, peer collaborative learning (Wu & Gong 2021): peer ensemble teacher and temporal-mean peers"
    MODEL = "keras_ffl.methods.pcl:PCL"
    TOPOLOGIES = ("shared",)
    SAME_ARCHITECTURE = True
    DEFAULT_BRANCHES = 3
    QUICKSTART_FLAGFILE = "zoo/quickstart_pcl_fashion_mnist.flags"
    SHORT_BUDGET_FLAGS = ("--rampup_epochs=1",)

    ema_decay: float = setting(0.999, "The temporal mean's decay (the rate is min(1 - 1/(step + 1), ema_decay)).",
                               low=0.0, high=1.0, high_open=True, old_flag="ema_decay")

    def data_needs(self, run):
        return dict(views=run.num_branches)

    def model_arguments(self, run, context):
        return dict(ema_decay=self.ema_decay)
