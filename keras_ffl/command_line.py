"""The command line's flags: generated from the general settings (``Config``'s fields) and from
every registered method's declaration, parsed into a ``Config``.

A setting ``S`` of method ``M`` is ``--M_S``, shown in ``--help`` under its method's section
(general flags first); flag names from before settings had homes are still accepted for the
method that has the setting.  Nothing here imports Keras.
"""

import dataclasses
import os

from absl import flags

from keras_ffl import specs
from keras_ffl.config import DATA_FACTS, Config
from keras_ffl.errors import ConfigError, HelpRequested, suggestion
from keras_ffl.methods import registry
from keras_ffl.methods.declaration import settings_of

_ENUMS = {
    "augment": ("auto", "none", "pad_crop_flip", "resized_crop_flip"),
    "method": registry.NAMES,
    "topology": ("auto", "shared", "independent"),
    "lr_schedule": ("step", "cosine"),
    "strategy": ("default", "mirrored", "multi_worker"),
    "mixed_precision": ("none", "mixed_float16", "mixed_bfloat16", "float64"),
    "jit_compile": ("auto", "true", "false"),
}


def distillation_defaults_help():
    """One line naming every method's default temperature and ramp-up (for ``--help``); a
    method whose ``preset`` setting changes them, once per preset."""
    parts = []
    for name, declaration in registry.declarations().items():
        preset = {f.name: meta for f, meta in settings_of(declaration)}.get("preset")
        variants = [(f"{name} {p}", declaration(preset=p)) for p in preset.choices] if preset else [(name, declaration())]
        for label, options in variants:
            temperature, rampup_epochs = options.distillation_defaults()
            parts.append(f"{label} T={temperature:g} L={rampup_epochs}")
    return "; ".join(parts)


_HELP = {
    "method": "Online distillation method (its own settings: the section --method=NAME below).",
    "backbones": "One backbone (copied for every branch) or one per sub-network, e.g. resnet32,wrn16_2. "
    + specs.BACKBONE_FORMS,
    "num_branches": "Number of sub-networks K (>= 2) when a single backbone is given (0 = 2, or one per listed backbone).",
    "topology": "shared: one trunk, last stage duplicated per branch (case 1); independent: separate "
    "networks (case 2); auto: shared when every branch has the same architecture.",
    "dataset": f"Dataset: {', '.join(specs.DATASETS)}, folder (your own images under --data_dir: "
    "train/<class>/*, test/<class>/*) or tfds:NAME (any TensorFlow Datasets image-classification set).",
    "data_dir": f"Data location: the IDX folder for fashion_mnist (default {specs.FASHION_MNIST_DIR}), "
    "the tfds data_dir for cifar10/cifar100/imagenet2012.",
    "manual_dir": "tfds manual download folder (imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar), "
    "prepared into --data_dir on first use.",
    "download": "Let tfds download (or prepare from --manual_dir) a dataset not yet prepared in data_dir.",
    "train_examples": "Use only N training examples (0 = all): the first N, or for --dataset=folder a seeded sample "
    "with every class in proportion.",
    "test_examples": "Use only N test examples (0 = all): the first N, or for --dataset=folder a seeded sample with "
    "every class in proportion.",
    "augment": "Training augmentation: auto (pad_crop_flip under 64 px, resized_crop_flip from 64 px), "
    "pad_crop_flip (CIFAR: reflect-pad 4, random crop, flip), resized_crop_flip (ImageNet: random-resized crop "
    "of 8-100% of the area, flip) or none.",
    "image_size": f"folder and tfds:NAME: the side images are brought to (0 = {specs.DEFAULT_IMAGE_SIZE}); from "
    f"{specs.LARGE_IMAGE_SIZE} on, training images are kept at image_size / 0.875 for random-resized crops.",
    "validation_fraction": "folder without test/: the stratified, seeded share of train/ held out as the test split.",
    "train_split": "tfds:NAME: the split trained on.",
    "test_split": "tfds:NAME: the split evaluated (the report's test split).",
    "epochs": "Training epochs.",
    "steps_per_epoch": "Cap on steps per epoch (0 = one full pass over the training set).",
    "validation_freq": "Evaluate on the test split every N epochs during training (0 = only at the end).",
    "batch_size": "Global training batch size (split across replicas).",
    "eval_batch_size": "Global evaluation batch size.",
    "lr": "Initial SGD learning rate.",
    "lr_milestones": "Epochs at which the learning rate is multiplied by --lr_gamma.",
    "lr_gamma": "Learning-rate decay factor at each milestone.",
    "lr_schedule": "step: x lr_gamma at each of --lr_milestones; cosine: 0.5 lr (1 + cos(pi e / epochs)) set at the "
    "start of each epoch e (MCL-OKD's and its CL-ILR's single SGDR cycle).",
    "momentum": "SGD momentum.",
    "nesterov": "Nesterov momentum (FFL code: on).",
    "weight_decay": "PyTorch-style L2 on every network weight, BN and biases included.",
    "temperature": "Distillation temperature T (0 = the method's own: " + distillation_defaults_help() + ").",
    "rampup_epochs": "Epochs L of the exp(-5(1-e/L)^2) ramp-up of every KL term (0 = no ramp-up, -1 = the "
    "method's own, listed under --temperature).",
    "split": "Where shared-trunk methods split the network: a split point of the backbone's family ("
    + specs.splits_help() + "; resnet4 is ResNet-18/34, the first is ONE's and the default), 'early' (the family's "
    "early split point, MCL-OKD's), or '' for the method's own.",
    "init_dir": "Start sub-network k from network k of a finished run (same backbones and dataset, "
    "independent networks, e.g. a vanilla run): the AFD paper's ImageNet runs start from pre-trained networks.",
    "backend": "Keras backend: tensorflow, jax or torch (default: $KERAS_BACKEND, else the one keras.json names if "
    "installed, else the first installed of tensorflow, jax, torch). Weights are "
    "the same on every backend; the JAX backend is the GPU path where TensorFlow has no CUDA build.",
    "seed": "Random seed for weights, shuffling and augmentation.",
    "model_dir": "Run directory for config, checkpoints, logs and report (default runs/<method>_<backbones>_<dataset>).",
    "strategy": "default (one device), mirrored (every local device: tf.distribute.MirroredStrategy, or "
    "keras.distribution.DataParallel on JAX) or multi_worker (several processes: MultiWorkerMirroredStrategy, or JAX's "
    "distributed runtime through keras.distribution.initialize).",
    "worker_hosts": "Multi-worker: host:port of every worker, the same list on each (instead of TF_CONFIG); "
    "worker 0 is the chief, the only one that writes (on JAX it also coordinates).",
    "task_index": "Multi-worker: this worker's index in --worker_hosts.",
    "cpu_devices": "Split the CPU into N logical devices for --strategy=mirrored on a machine without GPUs.",
    "sync_bn": "Synchronise BatchNorm statistics across replicas.",
    "mixed_precision": "Keras dtype policy: mixed_float16 (GPUs), mixed_bfloat16 (CPUs and TPUs with bf16 units), "
    "or float64 (every layer and variable in double precision, from the float32 run's initial weights: a numerical "
    "reference run).",
    "jit_compile": "XLA compilation of the train step (auto: on when a GPU is present).",
    "verbose": "1: a progress bar with the total loss and each part's accuracy (one plain line per epoch when the "
    "output is not a terminal), 2: one line per epoch, 0: silent. Every loss term is in history.csv and TensorBoard.",
}


#: absl's module names, which group ``--help``: the general flags first, then one section per method.
GENERAL_SECTION = "general settings"
OLD_NAMES_SECTION = "older flag names"


def method_section(declaration):
    return f"--method={declaration.NAME}: {declaration.TITLE}"


class ChoiceParser(flags.EnumParser):
    """An enum flag in any case, whose error names the nearest choice."""

    def __init__(self, choices):
        super().__init__(list(choices), case_sensitive=False)

    def parse(self, argument):
        try:
            return super().parse(argument)
        except ValueError:
            raise ValueError(f"choose from {', '.join(self.enum_values)}"
                             f"{suggestion(argument, self.enum_values)}") from None


def define_flag(name, default, help_, choices, flag_values, module_name, like=None):
    """One absl flag of the type of ``like`` (default: of ``default``; None for older names,
    which are unset unless given)."""
    like = default if like is None else like
    if choices:
        flags.DEFINE(ChoiceParser(choices), name, default, help_, flag_values, flags.ArgumentSerializer(),
                     module_name=module_name)
    elif isinstance(like, bool):
        flags.DEFINE_bool(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif isinstance(like, int):
        flags.DEFINE_integer(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif isinstance(like, float):
        flags.DEFINE_float(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif isinstance(like, tuple):
        flags.DEFINE_list(name, None if default is None else [str(v) for v in default], help_,
                          flag_values=flag_values, module_name=module_name)
    else:
        flags.DEFINE_string(name, default, help_, flag_values=flag_values, module_name=module_name)


def define_general_flag(name, flag_values):
    """The flag of one general setting, as train defines it (for bench, which shares a few)."""
    define_flag(name, getattr(Config(), name), _HELP[name], _ENUMS.get(name, ()), flag_values, GENERAL_SECTION)


def old_flag_names():
    """``{old flag name: [(options class, setting name)]}``: names settings had before they had
    homes, each still accepted for the method that has it."""
    names = {}
    for declaration in registry.declarations().values():
        for field, meta in settings_of(declaration):
            if meta.old_flag and meta.old_flag != declaration.flag_name(field.name):
                names.setdefault(meta.old_flag, []).append((declaration, field))
    return names


def define_flags(flag_values):
    """Defines one flag per general Config field and per setting of every registered method
    (``--<method>_<setting>``), and the older flag names, on ``flag_values``."""
    for field in dataclasses.fields(Config):
        if field.name not in DATA_FACTS and field.name != "options":
            define_general_flag(field.name, flag_values)
    for declaration in registry.declarations().values():
        for field, meta in settings_of(declaration):
            define_flag(declaration.flag_name(field.name), field.default, meta.help, meta.choices, flag_values,
                        method_section(declaration))
    for old, owners in old_flag_names().items():
        _, field = owners[0]
        define_flag(old, None, f"Older name of --{' / --'.join(d.flag_name(f.name) for d, f in owners)}.",
                    field.metadata["setting"].choices, flag_values, OLD_NAMES_SECTION, like=field.default)


def help_text(flag_values):
    """``--help``: the general flags, then each method's settings under its name."""
    import textwrap

    body = [flag_values.module_help(GENERAL_SECTION)]
    for declaration in registry.declarations().values():
        section = method_section(declaration)
        if flag_values.get_flags_for_module(section):
            body.append(flag_values.module_help(section))
        else:
            body.append(f"{section}: no settings of its own")
    old = ", ".join(f"--{n}" for n in sorted(old_flag_names()))
    body.append(textwrap.fill(f"{OLD_NAMES_SECTION}, still accepted for the method that has the setting: {old}",
                              width=80, subsequent_indent="  "))
    return "\n\n".join(body)


def _integers(flag, value):
    try:
        return tuple(int(v) for v in value)
    except ValueError:
        raise ConfigError(f"--{flag} must be integers, got {','.join(value)}") from None


def config_from_flags(flag_values):
    """The Config the flags describe.  A setting of another method than ``--method``'s, given on
    the command line or in a flagfile, is an error (it would silently do nothing)."""
    values = {}
    for field in dataclasses.fields(Config):
        if field.name in DATA_FACTS or field.name == "options":
            continue
        value = flag_values[field.name].value
        if field.name == "lr_milestones":
            value = _integers(field.name, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    method = values["method"]
    declaration = registry.get(method)
    settings = {}
    for other in registry.declarations().values():
        for field, meta in settings_of(other):
            flag = other.flag_name(field.name)
            if other is declaration:
                value = flag_values[flag].value
                settings[field.name] = _integers(flag, value) if meta.integers else (
                    tuple(value) if isinstance(value, list) else value)
            elif flag_values[flag].present:
                raise ConfigError(f"--{flag} is a setting of --method={other.NAME}; this run's method is {method}")
    for old, owners in old_flag_names().items():
        if not flag_values[old].present:
            continue
        mine = [field for d, field in owners if d is declaration]
        if not mine:
            owner_flags = ", ".join(f"--{d.flag_name(f.name)}" for d, f in owners)
            raise ConfigError(f"--{old} (now {owner_flags}) is not a setting of --method={method}")
        new = declaration.flag_name(mine[0].name)
        if flag_values[new].present:
            raise ConfigError(f"--{old} and --{new} are the same setting: give one")
        value = flag_values[old].value
        settings[mine[0].name] = _integers(old, value) if mine[0].metadata["setting"].integers else (
            tuple(value) if isinstance(value, list) else value)
    return Config(**values, options=declaration(**settings))


def parse_command(argv, commands, module, define):
    """``python -m keras_ffl.<module> COMMAND [--flags]`` -> ``(command, FlagValues)``;
    raises ConfigError for a missing or unknown command, HelpRequested for --help."""
    command = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else ""
    usage = f"usage: python -m keras_ffl.{module} {{{','.join(commands)}}} [--flag=value ...]"
    try:
        flag_values = parse_argv([argv[0], *argv[2 if command else 1:]], define=define)
    except HelpRequested as e:
        raise HelpRequested(usage + "\n\n" + str(e).split("\n", 2)[-1]) from None
    if command not in commands:
        raise ConfigError(f"{usage} (got '{command or 'nothing'}')")
    return command, flag_values


def parse_argv(argv, define=define_flags):
    """Parses ``argv`` (program name first) into a FlagValues.

    Raises ConfigError on bad flags and HelpRequested for ``--help``/``-h``/``--helpfull``.
    """
    flag_values = flags.FlagValues()
    define(flag_values)
    if any(arg in ("--help", "-h", "--helpfull", "-help") for arg in argv[1:]):
        program = os.path.basename(argv[0]) if argv else "keras_ffl"
        if program.endswith(".py"):
            program = f"python -m keras_ffl.{program[:-3]}"
        help_ = help_text(flag_values) if define is define_flags else flag_values.get_help()
        raise HelpRequested(f"usage: {program} [--flagfile=FILE] [--flag=value ...]\n\n{help_}")
    from keras_ffl.paths import expand_flagfiles

    argv = list(argv[:1]) + expand_flagfiles(argv[1:])
    try:
        flag_values(argv)
    except flags.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return flag_values
