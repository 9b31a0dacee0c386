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
    cls, options = METHODS[config.method].cls, METHODS[config.method].options
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


def load_run(model_dir, weights="", **overrides):
    """Rebuilds a run from its model_dir (config.json plus weights) on one device.

    ``overrides`` replace Config fields (``data_dir``, ``test_examples``...).  Returns
    ``(model, config)``; raises ConfigError for a missing config or unreadable weights.
    """
    import dataclasses

    from keras_ffl import run_dir
    from keras_ffl.config import Config, ConfigError

    config = Config.load(run_dir.path(model_dir, run_dir.CONFIG))
    local = {"strategy": "default", "cpu_devices": 0, "worker_hosts": (), "task_index": 0, "sync_bn": False,
             "model_dir": model_dir}
    config = dataclasses.replace(config, **{**local, **overrides}).validated(check_data=False)
    weights = weights or run_dir.find_weights(model_dir)
    spec = config.dataset_spec
    model = build_model(config, spec.num_classes, spec.image_shape)
    compile_model(model, config, 1)  # the run's own optimiser, so its saved state loads cleanly
    try:
        model.load_weights(weights, skip_mismatch=False)
    except Exception as e:  # h5py/keras raise several types for corrupt or foreign files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot load weights {weights}: {detail}") from None
    return model, config


def initialize_from(model, init_dir):
    """Sub-network k takes the weights of network k of the finished run in ``init_dir``
    (checked to match by the config)."""
    trained, _ = load_run(init_dir)
    for branch, source in zip(model.branches, trained.branches):
        branch.set_weights(source.get_weights())


def part_model(model, config, part, raw_pixels=False):
    """One part of a method model as ``images -> logits``, for deployment and offline KD.

    ``net{k}`` carries only the trunk and branch k, and ``pretrained{k}`` only that frozen
    network; ``fused``, ``ensemble`` and ``teacher`` need every sub-network and carry the whole
    method model.  ``raw_pixels=True`` puts the data pipeline's standardisation in the graph,
    so the model takes float pixels in [0, 255].
    """
    from keras_ffl.config import ConfigError
    from keras_ffl.data import NORMALIZATION
    from keras_ffl.layers import Standardize

    if part not in model.part_names:
        raise ConfigError(f"no part '{part}' in this {config.method} model: choose from {', '.join(model.part_names)}")
    inputs = keras.Input(config.dataset_spec.image_shape, name="pixels" if raw_pixels else "images")
    x = Standardize(*NORMALIZATION[config.dataset], name="standardize")(inputs) if raw_pixels else inputs
    index = "".join(c for c in part if c.isdigit())
    if part == f"net{index}":
        logits = model.subnetwork(int(index))(x)
    elif part == f"pretrained{index}":
        logits = model.pretrained[int(index)](x)[0]
    else:
        logits = model(x)[part]
    return keras.Model(inputs, logits, name=f"{config.method}_{part}")


def build(config, splits=("train", "test")):
    """Data plus compiled model for a validated Config: ``(model, data)``."""
    data = load_data(config, splits)
    model = build_model(config, data.num_classes, data.image_shape)
    compile_model(model, config, max(data.steps_per_epoch, 1))
    return model, data
