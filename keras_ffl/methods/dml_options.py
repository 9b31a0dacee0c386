"""DML's settings and facts (its model: ``dml.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, cifar_resnet_depth, setting

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

    def torch_reference_step(self, run, images, labels, bfloat16=False):
        """DML's synchronous step: independent networks, CE plus the mean KL to each peer."""
        depth = cifar_resnet_depth(run)
        if depth is None or self.update != "synchronous":
            return None
        from keras_ffl import torch_reference as ref

        model = ref.Branches(depth, run.dataset_spec.num_classes, run.num_branches, shared=False)
        return ref.TrainStep(model, lambda out, y: ref.dml_loss(out[0], y, run.temperature),
                             ref.sgd_all(model, run.lr, run.weight_decay, run.momentum, run.nesterov), images,
                             labels, bfloat16)

    def model_arguments(self, run, context):
        return dict(update=self.update)
