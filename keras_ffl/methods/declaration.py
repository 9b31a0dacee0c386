"""What a method shows to the outside, declared once and free of Keras.

Each method's home is a pair of files: ``<name>.py`` (its ``keras.Model``) and
``<name>_options.py``, a frozen dataclass subclassing ``MethodOptions``: its settings (each a
``setting`` with default, choices, range and help), the facts the command line checks before
importing Keras (topologies, branch limits, distillation defaults), its checks, what it asks of
the data, and the hooks ``build`` calls (constructor arguments, extra ``compile`` arguments, a
warm start, a pre-training stage).  The model class takes its defaults and choices from the
same declaration; ``keras_ffl.methods.registry`` lists the declarations, and the flags, the
config file, ``bench``, ``reproduce`` and the tests iterate over it.

A setting ``fusion`` of method ``ffl`` is the flag ``--ffl_fusion`` and the key ``fusion``
under ``"ffl"`` in config.json.  ``old_flag`` keeps the name it had before settings had
homes (``--fusion``), so older flagfiles and config files keep working.
"""

import dataclasses
from typing import ClassVar

from keras_ffl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one setting is shown and checked (kept in its dataclass field's metadata)."""

    help: str
    choices: tuple = ()
    #: ``(low, high, low_open, high_open)``; None is no bound.
    bounds: tuple = (None, None, False, False)
    #: The flag name it had before it had a home (config.json keys of that time too).
    old_flag: str = ""
    #: A path to another run: not carried into a published zoo entry, moved with a model_dir.
    path: bool = False
    #: A list of integers (epochs) given as a comma-separated flag.
    integers: bool = False


def setting(default, help, *, choices=(), low=None, high=None, low_open=False, high_open=False, old_flag="",
            path=False, integers=False):
    """A field of a method's options dataclass."""
    meta = Setting(help, tuple(choices), (low, high, low_open, high_open), old_flag, path, integers)
    return dataclasses.field(default=default, metadata={"setting": meta})


def settings_of(options_class):
    """``[(field, Setting)]`` of an options dataclass, in declaration order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(options_class)]


def cifar_resnet_depth(run):
    """The depth of a run whose networks are all one CIFAR ResNet (the PyTorch reference has
    them), else None."""
    from keras_ffl import specs

    parsed = {specs.parse_backbone(b) for b in run.backbones}
    return parsed.pop().depth if len(parsed) == 1 and next(iter(parsed)).family == "resnet" else None


def check_value(flag, value, meta):
    """ConfigError unless ``value`` is one of the choices and inside the bounds."""
    if meta.choices and value not in meta.choices:
        raise ConfigError(f"--{flag}={value}: choose from {', '.join(map(str, meta.choices))}")
    low, high, low_open, high_open = meta.bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and (value > high or (high_open and value == high))):
        span = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"--{flag} must be in {span}, got {value}")


@dataclasses.dataclass(frozen=True)
class RequiredRun:
    """A finished run a method needs before it starts (``--kd_teacher_dir``, ``--ffcl_pretrained_dir``).

    ``same_networks``: its networks must be this run's (independent, same architectures)."""

    flag: str
    model_dir: str
    same_networks: bool
    remedy: str


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of every method's declaration: the facts first, then the hooks (defaults: none)."""

    #: The method's name: ``--method=NAME``, the key of its settings in config.json.
    NAME: ClassVar[str] = ""
    #: One line for ``--help`` and the README's list.
    TITLE: ClassVar[str] = ""
    #: ``"module:Class"`` of its ``keras.Model``, imported when a model is built.
    MODEL: ClassVar[str] = ""
    #: The sub-network layouts it supports; the first is what ``--topology=auto`` prefers.
    TOPOLOGIES: ClassVar[tuple] = ("independent",)
    MIN_BRANCHES: ClassVar[int] = 2
    DEFAULT_BRANCHES: ClassVar[int] = 2
    SAME_ARCHITECTURE: ClassVar[bool] = False
    #: The distillation temperature and ramp-up of its paper or code (the one default of the
    #: Python class and of the command line).
    TEMPERATURE: ClassVar[float] = 3.0
    RAMPUP_EPOCHS: ClassVar[int] = 80
    #: Where a shared trunk ends when ``--split`` says nothing: "" (the backbone's default,
    #: ONE's) or "early" (the backbone's earlier split point).
    DEFAULT_SPLIT: ClassVar[str] = ""
    #: Whether ``--split`` may move its trunk's end (CL-ILR's presets place their forks).
    ACCEPTS_SPLIT: ClassVar[bool] = True
    #: The baseline every other method is compared with (CE only, no distillation).
    BASELINE: ClassVar[bool] = False
    #: Trains from data alone (False: it needs a finished run first, as offline KD's teacher);
    #: ``bench --suite`` and ``reproduce`` run the standalone methods.
    STANDALONE: ClassVar[bool] = True
    #: Its short Fashion-MNIST setting (``reproduce``'s suite runs it under a budget).
    QUICKSTART_FLAGFILE: ClassVar[str] = ""
    #: Flags it adds to its quickstart setting under ``reproduce``'s 4-epoch budget.
    SHORT_BUDGET_FLAGS: ClassVar[tuple] = ()

    # ------------------------------------------------------------------ settings
    @classmethod
    def flag_name(cls, field_name):
        return f"{cls.NAME}_{field_name}"

    @classmethod
    def legacy_values(cls, values):
        """Its settings as read from a config.json written before they had homes, brought to
        today's meaning (``values``: ``{setting name: value}``)."""
        return values

    @classmethod
    def converted(cls, values):
        """``{setting name or old flag name: value}`` -> ``{setting name: value}``; ConfigError for
        a name that is not one of its settings."""
        metas = {f.name: meta for f, meta in settings_of(cls)}
        names = {name: name for name in metas}
        names.update({meta.old_flag: name for name, meta in metas.items() if meta.old_flag})
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"--method={cls.NAME} has no setting {', '.join(unknown)} (its settings: "
                              f"{', '.join('--' + cls.flag_name(n) for n in metas) or 'none'})")
        converted = {}
        for key, value in values.items():
            name = names[key]
            if isinstance(value, list):
                value = tuple(value)
            converted[name] = tuple(int(v) for v in value) if metas[name].integers else value
        return converted

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def checked(self):
        """The settings' own choices and ranges (ConfigError); returns self."""
        for field, meta in settings_of(type(self)):
            check_value(self.flag_name(field.name), getattr(self, field.name), meta)
        return self

    def differences(self, other):
        """Flag names of the settings that differ from ``other`` (the same method's)."""
        return [self.flag_name(f.name) for f, _ in settings_of(type(self))
                if getattr(self, f.name) != getattr(other, f.name)]

    def relocated(self, old_model_dir, new_model_dir):
        """The options of a run moved from ``old_model_dir``: paths inside it move with it."""
        import os

        changes = {}
        for field, meta in settings_of(type(self)):
            value = getattr(self, field.name)
            if meta.path and value and old_model_dir:
                inside = os.path.relpath(os.path.normpath(value), os.path.normpath(old_model_dir))
                if not inside.startswith(os.pardir) and inside != ".":
                    changes[field.name] = os.path.join(new_model_dir, inside)
        return dataclasses.replace(self, **changes) if changes else self

    def without_paths(self):
        """The options with every path to another run cleared (a published zoo entry)."""
        return dataclasses.replace(self, **{f.name: "" for f, meta in settings_of(type(self)) if meta.path})

    # --------------------------------------------------------------------- facts
    def min_branches(self):
        """The fewest sub-networks it makes sense with, under these settings."""
        return self.MIN_BRANCHES

    def distillation_defaults(self):
        """``(temperature, rampup_epochs)`` where the run gives none."""
        return self.TEMPERATURE, self.RAMPUP_EPOCHS

    def validated(self, run, check_data):
        """The options with what the run implies filled in; ConfigError for a combination that
        cannot work.  ``run``: the Config, general settings resolved (backbones, topology,
        branches, model_dir)."""
        return self

    def required_runs(self, run):
        """``[RequiredRun]``: finished runs this one reads before its first step."""
        return []

    def data_needs(self, run):
        """Keyword arguments of ``keras_ffl.data.load_data``: ``views`` (augmented views per
        example), ``with_index``, ``negatives``, ``holdout`` (examples kept out of training)."""
        return {}

    def learning_rate_schedules(self, run):
        """``[(flag, lr, gamma, milestones)]`` of optimisers besides the networks' SGD."""
        return []

    def shared_layout(self, run):
        """How a shared trunk forks: ``"trunk"`` (one trunk, a head per branch) or ``"tree"``
        (a trunk, then shared middles, then heads: CL-ILR's hierarchy)."""
        return "trunk"

    def pretraining(self, run):
        """A stage trained before this run, as ``(method, {general settings})``, or None."""
        return None

    def training_summary(self, run):
        """What a zoo entry says of this method's own training, beside the schedule."""
        return {}

    def torch_reference_step(self, run, images, labels, bfloat16=False):
        """A ``keras_ffl.torch_reference.TrainStep`` of the same networks and loss as the PyTorch
        code of the method's paper, for ``bench --compare=torch``; None where the repository has
        no PyTorch reference of it (or of these networks)."""
        return None

    # --------------------------------------------------- hooks of build (Keras side)
    def model_arguments(self, run, context):
        """The model's own constructor arguments.  ``context`` (``keras_ffl.build``) gives
        ``sync_bn``, ``train_size``, ``load_part(model_dir, part)`` and ``step_schedule``."""
        return {}

    def compile_arguments(self, run, steps_per_epoch, context):
        """Extra ``compile`` arguments (a second optimiser)."""
        return {}

    def callbacks(self, run, data):
        """Keras callbacks its training needs beside the generic ones (``data``: the
        ``keras_ffl.data.Data`` the run trains on)."""
        return []

    def warm_start(self, model, run, context):
        """What training loads into the model before its first step (not evaluation or export,
        which load the run's own weights)."""
