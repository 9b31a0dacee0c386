"""The baseline's facts (its model: ``vanilla.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, cifar_resnet_depth


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

    def torch_reference_step(self, run, images, labels, bfloat16=False):
        """Each network (or head of one trunk) with cross-entropy alone."""
        depth = cifar_resnet_depth(run)
        if depth is None:
            return None
        import torch.nn.functional as F

        from keras_ffl import torch_reference as ref

        model = ref.Branches(depth, run.dataset_spec.num_classes, run.num_branches, shared=run.topology == "shared")
        return ref.TrainStep(model, lambda out, y: sum(F.cross_entropy(z, y) for z in out[0]),
                             ref.sgd_all(model, run.lr, run.weight_decay, run.momentum, run.nesterov), images,
                             labels, bfloat16)
