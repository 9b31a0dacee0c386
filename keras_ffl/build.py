"""``build(config)``: the one way a model, its optimiser and its data come from a Config.

train, evaluate, and the later zoo, export and bench entry points all go through here.
Call inside ``strategy.scope()`` when distributing.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_ffl.backbones import get_backbone
from keras_ffl.data import load_data
from keras_ffl.methods import METHODS


def use_sync_bn(config):
    """Synchronised BN only where there is something to synchronise: Keras's synchronised
    path on a single replica computes a slightly different gradient from plain BN."""
    return config.sync_bn and tf.distribute.get_strategy().num_replicas_in_sync > 1


def build_subnetworks(config, num_classes, image_shape):
    """Returns ``(trunk or None, [branch models])`` for a validated Config."""
    names = config.branch_backbones
    sync_bn = use_sync_bn(config)
    if config.topology == "shared":
        backbone = get_backbone(names[0], sync_bn=sync_bn)
        trunk = backbone.build_trunk(image_shape, name="trunk")
        trunk_shape = tuple(trunk.output.shape[1:])
        branches = [backbone.build_head(trunk_shape, num_classes, name=f"net{k}") for k in range(len(names))]
        return trunk, branches
    branches = [
        get_backbone(name, sync_bn=sync_bn).build_network(image_shape, num_classes, name=f"net{k}")
        for k, name in enumerate(names)
    ]
    return None, branches


def build_model(config, num_classes, image_shape):
    """Builds (and calls once, so every variable exists) the method model of a Config."""
    cls, options, _ = METHODS[config.method]
    trunk, branches = build_subnetworks(config, num_classes, image_shape)
    model = cls(
        branches,
        num_classes,
        trunk=trunk,
        temperature=config.temperature,
        rampup_epochs=config.rampup_epochs,
        weight_decay=config.weight_decay,
        name=config.method,
        **options(config),
    )
    model(np.zeros((1, *image_shape), dtype="float32"))
    return model


def step_schedule(base_lr, milestones, gamma, steps_per_epoch):
    """lr x gamma at each milestone epoch, in optimiser iterations so a restored optimiser
    resumes it.  The first step of epoch m has iteration m * steps; PiecewiseConstantDecay
    switches *after* a boundary, hence the -1 (PyTorch's MultiStepLR switches at the epoch)."""
    if not milestones:
        return base_lr
    boundaries = [m * steps_per_epoch - 1 for m in milestones]
    values = [base_lr * gamma**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_optimizer(config, steps_per_epoch):
    """The networks' SGD (all methods)."""
    schedule = step_schedule(config.lr, config.lr_milestones, config.lr_gamma, steps_per_epoch)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov)


def compile_model(model, config, steps_per_epoch):
    """Compiles and builds the optimiser now: restored checkpoints and MirroredStrategy both
    need its variables to exist before ``fit``."""
    optimizer = build_optimizer(config, steps_per_epoch)
    jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
    extras = METHODS[config.method].compile_extras
    model.compile(optimizer=optimizer, jit_compile=jit, **(extras(config, steps_per_epoch) if extras else {}))
    # Through the model: under mixed_float16 Keras wraps optimisers in a LossScaleOptimizer.
    model.build_optimizers()
    return model


def build(config, splits=("train", "test")):
    """Data plus compiled model for a validated Config: ``(model, data)``."""
    data = load_data(config, splits)
    model = build_model(config, data.num_classes, data.image_shape)
    compile_model(model, config, max(data.steps_per_epoch, 1))
    return model, data
