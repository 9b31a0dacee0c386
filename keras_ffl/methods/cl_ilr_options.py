"""CL-ILR's settings and facts (its model: ``cl_ilr.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting

#: Each preset's (temperature, rampup_epochs): the paper's beta = 0.5, T = 2 in MCL-OKD's
#: re-implementation; OKDDip's uses FFL/ONE's T = 3 and 80-epoch ramp-up.
PRESET_DISTILLATION = {"mcl_okd": (2.0, 0), "okddip": (3.0, 80)}


@dataclasses.dataclass(frozen=True)
class CLILROptions(MethodOptions):
    NAME = "cl_ilr"
    TITLE = "CL-ILR, collaborative learning (Song & Chai 2018): shared layers, backpropagation rescaling"
    MODEL = "keras_ffl.methods.cl_ilr:CLILR"
    TOPOLOGIES = ("shared",)
    SAME_ARCHITECTURE = True
    DEFAULT_BRANCHES = 4
    ACCEPTS_SPLIT = False
    QUICKSTART_FLAGFILE = "zoo/quickstart_cl_ilr_fashion_mnist.flags"

    preset: str = setting("mcl_okd", "The reading: mcl_okd (tree sharing, detached targets, 0.5 CE + 0.5 KL, no "
                          "+1e-7; the paper's beta; T=2, no ramp-up) or okddip (flat sharing, undetached targets, 1:1, "
                          "the FFL/ONE KL; T=3, 80-epoch ramp-up).", choices=tuple(PRESET_DISTILLATION),
                          old_flag="cl_ilr_preset")

    def distillation_defaults(self):
        return PRESET_DISTILLATION[self.preset]

    def shared_layout(self, run):
        return "tree" if self.preset == "mcl_okd" else "trunk"

    def model_arguments(self, run, context):
        return dict(preset=self.preset)
