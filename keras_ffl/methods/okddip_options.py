"""OKDDip's settings and facts (its model: ``okddip.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting


@dataclasses.dataclass(frozen=True)
class OKDDipOptions(MethodOptions):
    NAME = "okddip"
    TITLE = "OKDDip, online KD with diverse peers (Chen et al. 2020): attention-weighted peer teachers and a leader"
    MODEL = "keras_ffl.methods.okddip:OKDDip"
    TOPOLOGIES = ("shared",)
    SAME_ARCHITECTURE = True
    DEFAULT_BRANCHES = 4
    QUICKSTART_FLAGFILE = "zoo/quickstart_okddip_fashion_mnist.flags"
    SHORT_BUDGET_FLAGS = ("--rampup_epochs=1",)

    leader: bool = setting(True, "The last branch is the group leader (off: every branch is an attention peer, the "
                           "code's en=True).", old_flag="okddip_leader")

    def min_branches(self):
        return 2 + int(self.leader)  # two attention peers, and the leader when there is one

    def model_arguments(self, run, context):
        return dict(leader=self.leader)
