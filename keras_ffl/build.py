"""``build(config)``: the one way a model, its optimiser and its data come from a Config.

train, evaluate, zoo, export, bench and reproduce all go through here; the models know
nothing of a Config.  What is a method's own (its constructor arguments, extra ``compile``
arguments, what it loads before training, what it asks of the data) comes from its
declaration, ``config.options`` (``keras_ffl.methods.<name>_options``), through the hooks
``model_arguments``, ``compile_arguments``, ``warm_start`` and ``data_needs``; this module
names no method.  Call inside the distribution scope when distributing.
"""

import dataclasses

import keras

from keras_ffl import distribute
from keras_ffl.backbones import get_backbone
from keras_ffl.methods import registry


def set_precision(policy):
    """Keras's global dtype policy.  Under ``"float64"`` (the numerical reference run) also
    Keras's 64-bit type promotion: on JAX and PyTorch Keras casts every promoted float64
    result (``matmul``, so every ``Dense``; ``einsum``...) to float32, to match JAX's default
    of 64-bit types off (``BIT64_TO_BIT32_DTYPE`` in ``keras/src/backend/common/dtypes.py``),
    and a float64 run would compute partly in float32; and Keras's ``floatx``, the dtype of the
    optimisers' learning rate (0.1 in float32 is 0.1 + 1.5e-9, which moves every update by
    1.5e-8 of its size).  JAX's own 64-bit types are switched on before it starts
    (``backend.prepare_jax``).  Any other policy restores Keras's defaults."""
    from keras.src.backend.common import dtypes

    keras.mixed_precision.set_global_policy(policy)
    float64 = keras.mixed_precision.global_policy().name == "float64"
    keras.config.set_floatx("float64" if float64 else "float32")
    promotion = getattr(dtypes, "BIT64_TO_BIT32_DTYPE", None)
    if promotion is not None:
        default = "float64" if keras.backend.backend() == "tensorflow" else "float32"
        promotion["float64"] = "float64" if float64 else default


def use_sync_bn(config):
    """Synchronised BN only where there is something to synchronise, and only on TensorFlow:
    Keras's synchronised path on a single replica computes a slightly different gradient
    from plain BN, and on JAX a data-parallel step already normalises over the global batch."""
    return bool(config.sync_bn) and keras.backend.backend() == "tensorflow" and distribute.num_replicas() > 1


# --------------------------------------------------------------- method arguments
def load_part(model_dir, part, flag="part"):
    """A finished run rebuilt from its model_dir, ``part`` as images -> logits (offline KD's
    teacher)."""
    from keras_ffl.errors import ConfigError

    model, config = load_run(model_dir)
    try:
        return part_model(model, config, part)
    except ConfigError as e:
        raise ConfigError(f"--{flag}={part}: {e}") from None


def load_networks(model_dir):
    """The sub-networks of a finished run (FFCL's frozen teachers)."""
    model, _ = load_run(model_dir)
    return model.branches


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a method's build hooks get from here, so that no method imports build."""

    sync_bn: bool
    train_size: int
    load_part = staticmethod(load_part)
    load_networks = staticmethod(load_networks)
    step_schedule = staticmethod(lambda *args: step_schedule(*args))


def method_context(config):
    return MethodContext(sync_bn=use_sync_bn(config), train_size=train_size_of(config))


def train_size_of(config):
    """How many examples training sees (MCL-OKD's memory rows), known from the Config alone."""
    if config.train_size:  # your own data: counted when it was read
        return config.train_size
    spec = config.dataset_spec
    size = spec.train_size or 1024  # generated data: 1024 unless --train_examples
    size = min(config.train_examples, size) if config.train_examples and spec.train_size else \
        (config.train_examples or size)
    return size - config.options.data_needs(config).get("holdout", 0)


# --------------------------------------------------------------------- the model
def trunk_split(config):
    """The split point a shared trunk ends at: ``--split``, else the method's own (MCL-OKD's
    early one), else the backbone's default (ONE's)."""
    from keras_ffl.specs import early_split

    split = config.split or config.declaration.DEFAULT_SPLIT
    return early_split(config.backbones[0]) if split == "early" else (split or None)


def build_subnetworks(config, num_classes, image_shape):
    """``{"trunk": model or None, "branches": [models]}`` (plus CL-ILR's tree ``"middles"``)."""
    from keras_ffl.specs import early_split

    names = config.branch_backbones
    sync_bn = use_sync_bn(config)
    if config.topology != "shared":
        return {"trunk": None, "branches": [
            get_backbone(name, sync_bn=sync_bn).build_network(image_shape, num_classes, name=f"net{k}")
            for k, name in enumerate(names)]}
    backbone = get_backbone(names[0], sync_bn=sync_bn)
    if config.options.shared_layout(config) == "tree":  # a hierarchy of forks (CL-ILR's)
        early = early_split(names[0])
        root = backbone.build_trunk(image_shape, name="trunk", split=early)
        root_shape = tuple(root.output.shape[1:])
        default = backbone.default_split(image_shape)
        middles = [backbone.build_segment(root_shape, early, default, f"middle{b}", image_shape)
                   for b in range(-(-len(names) // 2))]
        middle_shape = tuple(middles[0].output.shape[1:])
        branches = [backbone.build_head(middle_shape, num_classes, name=f"net{k}", split=default,
                                        input_shape=image_shape) for k in range(len(names))]
        return {"trunk": root, "branches": branches, "middles": middles}
    split = trunk_split(config)
    trunk = backbone.build_trunk(image_shape, name="trunk", split=split)
    trunk_shape = tuple(trunk.output.shape[1:])
    branches = [backbone.build_head(trunk_shape, num_classes, name=f"net{k}", split=split, input_shape=image_shape)
                for k in range(len(names))]
    return {"trunk": trunk, "branches": branches}


def build_model(config, num_classes, image_shape):
    """The method model of a Config, every variable created."""
    networks = build_subnetworks(config, num_classes, image_shape)
    branches, trunk = networks.pop("branches"), networks.pop("trunk")
    return registry.model_class(config.method)(
        branches,
        num_classes,
        trunk=trunk,
        **networks,
        temperature=config.temperature,
        rampup_epochs=config.rampup_epochs,
        weight_decay=config.weight_decay,
        name=config.method,
        **config.options.model_arguments(config, method_context(config)),
    )


def build_model_from_float32_draws(config, num_classes, image_shape):
    """A float64 run is the numerical reference of the float32 run with the same seed, so it
    starts from that run's initial weights: initialisers draw other numbers in float64."""
    policy = keras.mixed_precision.global_policy()
    set_precision("float32")
    keras.utils.set_random_seed(config.seed)
    try:
        float32_twin = build_model(config, num_classes, image_shape)
    finally:
        set_precision(policy)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, num_classes, image_shape)
    model.set_weights(float32_twin.get_weights())
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
    if config.lr_schedule == "cosine":
        from keras_ffl.optimizers import EpochCosineDecay

        schedule = EpochCosineDecay(config.lr, config.epochs, steps_per_epoch)
    else:
        schedule = step_schedule(config.lr, config.lr_milestones, config.lr_gamma, steps_per_epoch)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov)


def jit_setting(config):
    """``--jit_compile``: Keras's own ``"auto"`` (XLA on GPUs), or forced.  The JAX backend
    always compiles its step."""
    if keras.backend.backend() == "jax":
        return True
    return {"auto": "auto", "true": True, "false": False}[config.jit_compile]


def compile_model(model, config, steps_per_epoch):
    """Compiles (which builds every optimiser variable: restored checkpoints and
    MirroredStrategy both need them before ``fit``)."""
    model.compile(optimizer=build_optimizer(config, steps_per_epoch), jit_compile=jit_setting(config),
                  **config.options.compile_arguments(config, steps_per_epoch, method_context(config)))
    return model


def load_run(model_dir, weights="", run_precision=False, **overrides):
    """Rebuilds a run from its model_dir (config.json plus weights) on one device.

    The model is built in the current dtype policy (float32 for export, the zoo and
    initialisation), or with ``run_precision`` in the run's own (evaluate, so that it gives
    the numbers of the run's report).  ``overrides`` replace Config fields (``data_dir``,
    ``test_examples``...).  Returns ``(model, config)``; raises ConfigError for a missing
    config or unreadable weights.
    """
    import dataclasses
    import warnings

    import keras

    from keras_ffl import run_dir
    from keras_ffl.config import Config, ConfigError

    config = Config.load(run_dir.path(model_dir, run_dir.CONFIG))
    from keras_ffl.backend import running

    local = {"strategy": "default", "cpu_devices": 0, "worker_hosts": (), "task_index": 0, "sync_bn": False,
             "model_dir": model_dir, "backend": running() or ""}  # this process's backend, not the training one
    config = dataclasses.replace(config, **{**local, **overrides}).validated(check_data=False)
    weights = weights or run_dir.find_weights(model_dir)
    spec = config.dataset_spec
    policy = keras.mixed_precision.global_policy()
    if run_precision and config.mixed_precision != "none":
        set_precision(config.mixed_precision)
    try:
        model = build_model(config, spec.num_classes, spec.image_shape)
        compile_model(model, config, 1)  # the run's own optimiser, so its saved state loads cleanly
    finally:
        set_precision(policy)
    try:
        with warnings.catch_warnings():
            # A float32 rebuild of a mixed_float16 run has no loss-scale variables; the optimiser
            # state is not used by these callers, the weights all load.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(weights, skip_mismatch=False)
    except Exception as e:  # h5py/keras raise several types for corrupt or foreign files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot load weights {weights}: {detail}") from None
    return model, config


def warm_start(model, config):
    """What the method loads before its first step (FFCL's pre-trained teachers)."""
    config.options.warm_start(model, config, method_context(config))


def initialize_from(model, init_dir):
    """Sub-network k takes the weights of network k of the finished run in ``init_dir``
    (checked to match by the config)."""
    trained, _ = load_run(init_dir)
    for branch, source in zip(model.branches, trained.branches):
        branch.set_weights(source.get_weights())


def part_model(model, config, part, raw_pixels=False):
    """One part of a method model as ``images -> logits``, for deployment and offline KD.

    ``net{k}`` carries only the trunk and branch k, and ``pretrained{k}`` only that frozen
    network; ``fused``, ``ensemble`` and ``teacher`` carry what they need of the method model.
    ``raw_pixels=True`` puts the data pipeline's standardisation in the graph, so the model
    takes float pixels in [0, 255].
    """
    from keras_ffl.config import ConfigError
    from keras_ffl.layers import Standardize

    try:
        part_net = model.part(part)
    except ValueError as e:
        raise ConfigError(str(e).replace(f"this {model.name} model", f"this {config.method} model")) from None
    if not raw_pixels:
        return keras.Model(part_net.inputs[0], part_net.outputs[0], name=f"{config.method}_{part}")
    inputs = keras.Input(config.dataset_spec.image_shape, name="pixels")
    standardized = Standardize(*config.normalization, name="standardize")(inputs)
    return keras.Model(inputs, part_net(standardized), name=f"{config.method}_{part}")


def build(config, splits=("train", "test"), shard=(0, 1)):
    """Data plus compiled model for a validated Config: ``(model, data)``.  ``shard``: this
    process's (index, count) where several processes feed one data-parallel step (JAX).
    ``data.config`` is the Config completed with what the data told (your own data's classes
    and statistics): the one to save and to rebuild the run from."""
    from keras_ffl.data import load_data

    data = load_data(config, splits, shard=shard, **config.options.data_needs(config))
    if config.mixed_precision == "float64":
        model = build_model_from_float32_draws(data.config, data.num_classes, data.image_shape)
    else:
        model = build_model(data.config, data.num_classes, data.image_shape)
    compile_model(model, data.config, max(data.steps_per_epoch, 1))
    return model, data
