"""The baseline's facts (its model: ``vanilla.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions


@dataclasses.dataclass(frozen=True)
class VanillaOptions(MethodOptions):
    NAME = "vanilla"
    TITLE = "Vanilla: each network alone with cross-entropy (the baseline)"
    MODEL = "keras_ffl.methods.vanilla:Vanilla"
    # Shared is allowed so that CE-only training of a shared-trunk model can be compared
    # (keras_ffl.bench's overhead figure); independent networks are the baseline's default.
    TOPOLOGIES = ("independent", "shared")
    MIN_BRANCHES = 1
    RAMPUP_EPOCHS = 0
    BASELINE = True
    QUICKSTART_FLAGFILE = "zoo/quickstart_vanilla_fashion_mnist.flags"
