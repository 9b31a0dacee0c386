"""The one configuration path: flags -> ``Config`` (frozen, validated once) -> model_dir/config.json.

Every entry point (train, evaluate, zoo, export, bench, reproduce) builds from a ``Config``;
a trained run is its model_dir, whose config.json plus weights rebuild it.  A Config holds
the general settings (data, schedule, devices, model_dir) and ``options``, the settings of
its method, declared beside the method (``keras_ffl.methods.<name>_options``, listed by
``keras_ffl.methods.registry``).  Flags are generated from both, so a setting exists in
exactly one place; config.json keeps the method's settings under the method's name.
"""

import dataclasses
import json
import os

from keras_ffl import specs
from keras_ffl.errors import ConfigError, suggestion  # noqa: F401 - ConfigError re-exported
from keras_ffl.files import atomic_write_text
from keras_ffl.methods import registry
from keras_ffl.methods.declaration import check_value, settings_of


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    # What to train.
    method: str = registry.DEFAULT
    backbones: tuple = ("resnet32",)
    num_branches: int = 0
    topology: str = "auto"
    # Data.
    dataset: str = "fashion_mnist"
    data_dir: str = ""
    manual_dir: str = ""
    download: bool = True
    train_examples: int = 0
    test_examples: int = 0
    augment: str = "auto"
    image_size: int = 0
    validation_fraction: float = 0.0
    train_split: str = "train"
    test_split: str = "test"
    # Schedule and optimiser (FFL code defaults).
    epochs: int = 300
    steps_per_epoch: int = 0
    validation_freq: int = 1
    batch_size: int = 128
    eval_batch_size: int = 100
    lr: float = 0.1
    lr_milestones: tuple = (150, 225)
    lr_gamma: float = 0.1
    lr_schedule: str = "step"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    # Distillation, every method's (0 and -1: the method's own, from its paper or code).
    temperature: float = 0.0
    rampup_epochs: int = -1
    # Where shared-trunk methods split the network ("" = the method's own choice).
    split: str = ""
    # Initialisation.
    init_dir: str = ""
    # What the data itself gives a folder or tfds:NAME dataset, filled in when it is first read
    # and kept in config.json, so evaluate, zoo and export use the same numbers (not flags).
    class_names: tuple = ()
    mean: tuple = ()
    std: tuple = ()
    train_size: int = 0
    train_class_counts: tuple = ()  # images of each class trained on / evaluated (in-memory datasets)
    test_class_counts: tuple = ()
    # Run.
    backend: str = ""
    seed: int = 0
    model_dir: str = ""
    strategy: str = "default"
    worker_hosts: tuple = ()
    task_index: int = 0
    cpu_devices: int = 0
    sync_bn: bool = False
    mixed_precision: str = "none"
    jit_compile: str = "auto"
    verbose: int = 1
    # The method's own settings: an instance of its registered options dataclass.
    options: object = None

    def __init__(self, **values):
        """``Config(method="kdcl", teacher="linear", epochs=1)``: general settings by name, the
        method's by their names in its declaration (or their older flag names); or
        ``options=`` a whole options object of the method."""
        general = {f.name: f for f in dataclasses.fields(Config)}
        for name, field in general.items():
            object.__setattr__(self, name, values.pop(name) if name in values else field.default)
        declaration = registry.find(self.method)
        if declaration is None:  # reported by ``validated`` with the choices
            if values or self.options is not None:
                raise ConfigError(f"unknown --method '{self.method}'{suggestion(self.method, registry.NAMES)}")
            return
        options = self.options
        if options is None:
            options = declaration()
        elif type(options) is not declaration:
            raise ConfigError(f"the settings of --method={getattr(options, 'NAME', '?')} were given for "
                              f"--method={self.method}")
        if values:
            options = dataclasses.replace(options, **declaration.converted(values))
        object.__setattr__(self, "options", options)

    # ------------------------------------------------------------- derived values
    @property
    def declaration(self):
        """The method's registered options class."""
        return registry.get(self.method)

    @property
    def branch_backbones(self):
        """One backbone name per sub-network (call on a validated config)."""
        return list(self.backbones) * self.num_branches if len(self.backbones) == 1 else list(self.backbones)

    @property
    def dataset_spec(self):
        if self.dataset in specs.DATASETS:
            return specs.DATASETS[self.dataset]
        size = self.image_size or specs.DEFAULT_IMAGE_SIZE
        return specs.DatasetSpec(len(self.class_names), (size, size, 3), self.train_size, 0,
                                 "folder" if self.dataset == "folder" else "tfds_images")

    @property
    def resolved_data_dir(self):
        return self.data_dir or self.dataset_spec.default_data_dir

    @property
    def normalization(self):
        """``(mean, std)`` per channel: the run's own (computed from its training split) or the
        dataset's standard ones."""
        if self.mean:
            return tuple(self.mean), tuple(self.std)
        return specs.NORMALIZATION[self.dataset]

    @property
    def labels(self):
        """Class names, or the class indices as strings where the dataset has none."""
        names = self.class_names or specs.CLASS_NAMES.get(self.dataset, ())
        return [str(n) for n in names] or [str(c) for c in range(self.dataset_spec.num_classes)]

    @property
    def augmentation(self):
        """The training recipe: ``pad_crop_flip`` for small images, ``resized_crop_flip`` for
        large ones, unless ``--augment`` names one (or ``none``)."""
        if self.augment != "auto":
            return self.augment
        return "resized_crop_flip" if self.dataset_spec.image_shape[0] >= specs.LARGE_IMAGE_SIZE else "pad_crop_flip"

    # ----------------------------------------------------------------- validation
    def with_method_distillation_defaults(self):
        """The method's own temperature and ramp-up where none was given (the one default the
        Python class uses too); an explicit value, or one already resolved, stays."""
        temperature, rampup_epochs = self.options.distillation_defaults()
        changes = {}
        if self.temperature == 0.0:
            changes["temperature"] = temperature
        if self.rampup_epochs == -1:
            changes["rampup_epochs"] = rampup_epochs
        return dataclasses.replace(self, **changes) if changes else self

    def validated(self, check_data=True):
        """Returns a copy with ``auto`` values resolved; raises ConfigError on any problem."""
        c = self
        method = registry.get(c.method)
        check_numbers(c)
        c = c.with_method_distillation_defaults()
        canonical, num_branches, topology = check_networks(c, method)
        c = check_dataset(c, check_data)
        check_general(c)
        check_split(c, method, canonical, topology)
        from keras_ffl.backend import resolve

        backend = resolve(c.backend)
        if c.strategy == "default" and c.cpu_devices > 1:
            raise ConfigError("--cpu_devices splits the CPU for --strategy=mirrored; it does nothing with default")
        check_cluster(c, backend)
        if c.manual_dir:
            if c.dataset_spec.source not in ("tfds", "tfds_images"):
                raise ConfigError(f"--manual_dir is for tfds datasets; {c.dataset} does not use it")
            if check_data and not os.path.isdir(c.manual_dir):
                raise ConfigError(f"--manual_dir {c.manual_dir} does not exist")
        if check_data:
            check_data_dir(c.dataset, c.data_dir or c.dataset_spec.default_data_dir)
        model_dir = c.model_dir or os.path.join("runs", f"{c.method}_{'-'.join(canonical)}_{c.dataset}")
        c = dataclasses.replace(c, backbones=canonical, num_branches=num_branches, topology=topology,
                                lr_milestones=tuple(int(m) for m in c.lr_milestones), model_dir=model_dir,
                                backend=backend)
        options = c.options.checked().validated(c, check_data)
        if c.options.data_needs(c) and c.dataset_spec.shuffle_window > 0:
            raise ConfigError(f"--method={c.method} needs per-example views or indices, which the in-memory pipeline "
                              f"gives: {c.dataset} is streamed")
        c = dataclasses.replace(c, options=options)
        if check_data:
            for required in options.required_runs(c):
                check_required_run(c, required)
        if c.init_dir:
            if topology != "independent":
                raise ConfigError("--init_dir starts independent networks from a finished run: use "
                                  "--topology=independent")
            if check_data:
                check_trained_networks("init_dir", c.init_dir, c.dataset, canonical, num_branches)
        return c

    def pretraining_config(self):
        """The stage the method trains first (FFCL's peers alone with CE, a vanilla run, into its
        ``pretrained_dir``), as a validated Config; None when the method has none."""
        stage = self.options.pretraining(self)
        if stage is None:
            return None
        method, changes = stage
        return dataclasses.replace(self, method=method, options=None, **changes).validated(check_data=False)

    # -------------------------------------------------------------- (de)serialise
    def to_dict(self):
        """The general settings, and the method's under its name (``"ffl": {"fusion": ...}``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if self.options is not None:
            d[self.method] = self.options.to_dict()
        return d

    @classmethod
    def from_dict(cls, data):
        """Reads to_dict's form, and config.json files written before methods had homes (every
        method's settings flat beside the general ones)."""
        data = dict(data)
        general = {f.name for f in dataclasses.fields(cls)} - {"options"}
        method = data.get("method", cls.method)
        declarations = registry.declarations()
        own = data.pop(method, None) if isinstance(data.get(method), dict) else None
        old_names = {meta.old_flag for d in declarations.values() for _, meta in settings_of(d) if meta.old_flag}
        declaration = declarations.get(method)
        own_old = {meta.old_flag for _, meta in settings_of(declaration) if meta.old_flag} if declaration else set()
        flat = {k: data.pop(k) for k in list(data) if k not in general and k in old_names}
        unknown = sorted(set(data) - general)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if isinstance(values.get("augment"), bool):  # config.json before augmentation recipes had names
            values["augment"] = "auto" if values["augment"] else "none"
        settings = {k: v for k, v in flat.items() if k in own_old}  # other methods' flat defaults: not this run's
        if declaration is not None:
            settings = declaration.legacy_values(settings)
        settings.update(own or {})
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        return cls(**values, **settings)

    def save(self, path):
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise ConfigError(f"no config.json in {os.path.dirname(path) or '.'}: is it a keras_ffl model_dir?") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None

    def differences(self, other, ignore=("verbose", "download", "task_index", "backend")):
        """Settings that differ (the method's by their flag names); the data's own facts only
        where both know them; of ``worker_hosts`` only how many workers there are (a restarted
        cluster resumes on other hosts or ports)."""

        def compared(name, config):
            value = getattr(config, name)
            return len(value) if name == "worker_hosts" else value

        changed = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in ignore and f.name != "options" and compared(f.name, self) != compared(f.name, other)
            and not (f.name in DATA_FACTS and not (getattr(self, f.name) and getattr(other, f.name)))
        ]
        if self.method == other.method and self.options is not None:
            changed += self.options.differences(other.options)
        return changed

    def with_data_facts(self, **facts):
        return dataclasses.replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in facts.items()})


def check_networks(c, method):
    """``(backbones, num_branches, topology)`` resolved against the method's limits."""
    if not c.backbones:
        raise ConfigError("--backbones is empty: give one backbone (copied per branch) or one per sub-network")
    try:
        canonical = tuple(specs.parse_backbone(b).name for b in c.backbones)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(canonical) > 1:
        if c.num_branches not in (0, len(canonical)):
            raise ConfigError(
                f"--num_branches={c.num_branches} but --backbones lists {len(canonical)} networks: "
                "give one backbone per sub-network, or one backbone and --num_branches"
            )
        num_branches = len(canonical)
    else:
        num_branches = c.num_branches or method.DEFAULT_BRANCHES
    fewest = c.options.min_branches()
    if num_branches < fewest:
        raise ConfigError(f"--method={c.method} needs at least {fewest} sub-networks, got {num_branches}")
    homogeneous = len(set(canonical)) == 1
    if method.SAME_ARCHITECTURE and not homogeneous:
        raise ConfigError(f"--method={c.method} needs the same architecture for every branch, got {', '.join(canonical)}")
    topology = c.topology
    if topology == "auto":
        topology = "shared" if homogeneous and method.TOPOLOGIES[0] == "shared" else "independent"
    if topology not in method.TOPOLOGIES:
        raise ConfigError(f"--method={c.method} does not support --topology={topology}")
    if topology == "shared" and not homogeneous:
        raise ConfigError(f"--topology=shared needs one architecture, got {', '.join(canonical)}: use --topology=independent")
    return canonical, num_branches, topology


def check_general(c):
    positive = {"epochs": c.epochs, "batch_size": c.batch_size, "eval_batch_size": c.eval_batch_size}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"--{name} must be positive, got {value}")
    for name in ("train_examples", "test_examples", "steps_per_epoch", "validation_freq", "rampup_epochs"):
        if getattr(c, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(c, name)}")
    if c.lr <= 0 or c.temperature <= 0:
        raise ConfigError("--lr and --temperature must be positive")
    milestones = list(c.lr_milestones)
    if milestones != sorted(set(milestones)) or any(m <= 0 for m in milestones):
        raise ConfigError(f"--lr_milestones must be increasing positive epochs, got {milestones}")


def check_split(c, method, backbones, topology):
    """``--split`` names a split point of the backbone, for a shared trunk the method lets move."""
    if not c.split:
        return
    if topology != "shared":
        raise ConfigError("--split places a shared trunk: it needs --topology=shared")
    if not method.ACCEPTS_SPLIT:
        raise ConfigError(f"--split: --method={c.method} places its forks itself")
    allowed = specs.split_names(backbones[0])
    if c.split != "early" and c.split not in allowed:
        raise ConfigError(f"--split={c.split}: {backbones[0]} splits at {', '.join(allowed)} or 'early'")


def check_required_run(c, required):
    """A finished run the method reads first (``RequiredRun``), on the same data."""
    if not required.model_dir:
        raise ConfigError(f"--{required.flag} is empty: give the model_dir of a finished run")
    if required.same_networks:
        check_trained_networks(required.flag, required.model_dir, c.dataset, c.backbones, c.num_branches)
        return
    run = trained_run_config(required.model_dir, f"--{required.flag} {required.model_dir}", required.remedy)
    if run.dataset != c.dataset:
        raise ConfigError(f"--{required.flag} was trained on {run.dataset}, this run uses {c.dataset}")


#: Ranges of the general numeric settings: ``(low, high, low_open, high_open)``; None is no
#: bound.  Every float setting, of these or any method's, must be finite as well.
NUMBER_RANGES = {
    "lr": (0.0, None, True, False),
    "lr_gamma": (0.0, None, True, False),
    "momentum": (0.0, 1.0, False, True),
    "weight_decay": (0.0, None, False, False),
    "validation_fraction": (0.0, 1.0, False, True),
    "seed": (0, 2**32 - 1, False, False),
    "verbose": (0, 2, False, False),
    "cpu_devices": (0, None, False, False),
    "task_index": (0, None, False, False),
    "num_branches": (0, None, False, False),
    "image_size": (0, None, False, False),
}


def check_numbers(c):
    """Every float setting (general or the method's) finite in float32, every learning-rate
    schedule too, and every general setting of NUMBER_RANGES in its range, before any work."""
    import math

    from keras_ffl.methods.declaration import Setting

    largest = 3.4028234663852886e38  # float32's largest: training computes in float32, where 1e39 is inf
    values = [(f.name, getattr(c, f.name)) for f in dataclasses.fields(c) if f.name != "options"]
    if c.options is not None:
        values += [(c.options.flag_name(f.name), getattr(c.options, f.name)) for f, _ in settings_of(type(c.options))]
    for name, value in values:
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= largest):
            raise ConfigError(f"--{name} must be a finite float32 number (|x| <= {largest:.4g}), got {value}")
    schedules = [(c.lr, c.lr_gamma, c.lr_milestones)]
    if c.options is not None:
        schedules += [(lr, gamma, milestones) for _, lr, gamma, milestones in c.options.learning_rate_schedules(c)]
    for lr, gamma, milestones in schedules:
        peak = lr * max(gamma, 1.0) ** len(milestones)
        if not peak <= largest:
            raise ConfigError(f"--lr_gamma={gamma:g} over {len(milestones)} milestone(s) takes the learning rate {lr:g} "
                              f"past float32's largest number ({largest:.4g})")
    for name, bounds in NUMBER_RANGES.items():
        check_value(name, getattr(c, name), Setting("", bounds=bounds))


#: Config fields the data gives (not flags): kept in config.json once known.
DATA_FACTS = ("class_names", "mean", "std", "train_size", "train_class_counts", "test_class_counts")


def check_dataset(c, check_data):
    """The dataset name, and for your own data its folder or tfds name, before any work;
    returns the Config with the folder's class names filled in."""
    if c.image_size < 0 or not 0.0 <= c.validation_fraction < 1.0:
        raise ConfigError("--image_size must be >= 0 and --validation_fraction in [0, 1)")
    named = (*specs.DATASETS, "folder")
    if c.dataset.lower() in named and c.dataset not in named:  # any case, as --method takes
        c = dataclasses.replace(c, dataset=c.dataset.lower())
    if c.dataset in specs.DATASETS:
        for name, value, default in (("image_size", c.image_size, 0), ("validation_fraction", c.validation_fraction,
                                                                        0.0), ("train_split", c.train_split, "train"),
                                     ("test_split", c.test_split, "test")):
            if value != default:
                raise ConfigError(f"--{name} is for --dataset=folder and tfds:NAME datasets")
        return c
    if c.dataset == "folder":
        if c.train_split != "train" or c.test_split != "test":
            raise ConfigError("--train_split and --test_split are for tfds:NAME; a folder has train/ and test/")
        if not check_data:
            return c
        from keras_ffl.data.folder import scan

        listing = scan(c.data_dir)
        if listing.test and c.validation_fraction:
            raise ConfigError(f"{c.data_dir} has a test/ folder: --validation_fraction is for folders without one")
        if not listing.test and not c.validation_fraction:
            raise ConfigError(f"{c.data_dir} has no test/ folder: pass --validation_fraction (e.g. 0.1) to hold out a "
                              "stratified share of train/")
        for name in ("train_examples", "test_examples"):
            if 0 < getattr(c, name) < len(listing.classes):
                raise ConfigError(f"--{name}={getattr(c, name)} is fewer than the {len(listing.classes)} classes of "
                                  f"{c.data_dir}: the sample takes every class in proportion, at least one image each")
        return dataclasses.replace(c, class_names=listing.classes)
    if c.dataset.startswith("tfds:") and len(c.dataset) > len("tfds:"):
        if check_data:
            check_tfds_name(c.dataset[len("tfds:"):])
        if c.validation_fraction:
            raise ConfigError("--validation_fraction is for folders without test/; tfds:NAME uses --test_split")
        return c
    raise ConfigError(f"unknown --dataset '{c.dataset}'{suggestion(c.dataset, named)}: choose from "
                      f"{', '.join(sorted(specs.DATASETS))}, folder (your own images, --data_dir) or tfds:NAME")


def check_tfds_name(name):
    """A tfds dataset of that name exists (its class is looked up; TensorFlow is not imported)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError("tfds:NAME datasets need TensorFlow Datasets (pip install tensorflow-datasets)") from None
    try:
        tfds.builder_cls(name)
    except Exception as e:  # noqa: BLE001 - tfds raises its own DatasetNotFoundError and others
        raise ConfigError(f"--dataset=tfds:{name}: {str(e).splitlines()[0] if str(e) else 'not a tfds dataset'}") \
            from None


def cluster_json(worker_hosts, task_index):
    """The TF_CONFIG that --worker_hosts and --task_index stand for."""
    return json.dumps({"cluster": {"worker": list(worker_hosts)}, "task": {"type": "worker", "index": task_index}})


def check_cluster(c, backend="tensorflow"):
    """Multi-worker runs need a cluster: TF_CONFIG, or --worker_hosts and --task_index (JAX:
    --worker_hosts and --task_index; worker 0 coordinates)."""
    if c.strategy != "multi_worker":
        if c.worker_hosts:
            raise ConfigError("--worker_hosts is for --strategy=multi_worker")
        return
    if c.cpu_devices:
        raise ConfigError("--cpu_devices is for --strategy=mirrored; multi-worker runs one replica per worker device")
    if backend == "torch":
        raise ConfigError("--strategy=multi_worker needs the tensorflow or jax backend")
    if backend == "jax":
        if not c.worker_hosts:
            raise ConfigError("--strategy=multi_worker on JAX needs --worker_hosts (worker 0 coordinates) and "
                              "--task_index")
        if not 0 <= c.task_index < len(c.worker_hosts):
            raise ConfigError(f"--task_index={c.task_index} but --worker_hosts lists {len(c.worker_hosts)} workers")
        return
    tf_config = os.environ.get("TF_CONFIG", "")
    if c.worker_hosts:
        if tf_config and tf_config != cluster_json(c.worker_hosts, c.task_index):
            raise ConfigError("both TF_CONFIG and --worker_hosts describe the cluster: give one")
        if not 0 <= c.task_index < len(c.worker_hosts):
            raise ConfigError(f"--task_index={c.task_index} but --worker_hosts lists {len(c.worker_hosts)} workers")
        return
    if not tf_config:
        raise ConfigError("--strategy=multi_worker needs the cluster: set TF_CONFIG, or pass --worker_hosts and "
                          "--task_index")
    try:
        cluster = json.loads(tf_config)
        workers = cluster["cluster"]
        task = cluster["task"]
        if not isinstance(workers, dict) or task["type"] not in workers or not (
                0 <= int(task["index"]) < len(workers[task["type"]])):
            raise ValueError("its task is not in its cluster")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"TF_CONFIG is not a valid cluster description ({e})") from None


def check_data_dir(dataset, data_dir):
    if dataset not in specs.DATASETS:
        if dataset == "folder" and not os.path.isdir(data_dir or ""):
            raise ConfigError(f"--data_dir {data_dir} does not exist")
        if dataset.startswith("tfds:") and data_dir and not os.path.isdir(data_dir):
            raise ConfigError(f"--data_dir {data_dir} does not exist")
        return
    spec = specs.DATASETS[dataset]
    if spec.source == "idx":
        if not os.path.isdir(data_dir):
            raise ConfigError(
                f"Fashion-MNIST directory {data_dir} does not exist: "
                "run 'apt-get install dataset-fashion-mnist' or pass --data_dir"
            )
        missing = [f for f in specs.FASHION_MNIST_FILES if not os.path.isfile(os.path.join(data_dir, f))]
        if missing:
            raise ConfigError(
                f"Fashion-MNIST files missing in {data_dir}: {', '.join(missing)} "
                "(apt-get install dataset-fashion-mnist, or pass --data_dir)"
            )
    elif spec.source in ("tfds", "cifar") and data_dir and not os.path.isdir(data_dir):
        raise ConfigError(f"--data_dir {data_dir} does not exist")


#: Where tfds downloads CIFAR from (its python-version archives).
CIFAR_HOST, CIFAR_PAGE = "www.cs.toronto.edu", "https://www.cs.toronto.edu/~kriz/cifar.html"
TFDS_HOST = "storage.googleapis.com"


def tfds_prepared(name, data_dir):
    """Whether tfds has ``name`` prepared under ``data_dir`` (else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets), looked up on disk without importing tfds."""
    import glob

    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return bool(glob.glob(os.path.join(root, name, "**", "dataset_info.json"), recursive=True))


def check_download_possible(c):
    """A built-in dataset not on disk that would be downloaded: refused in one line, before
    anything is created, when it cannot be (ImageNet without --manual_dir; CIFAR with its host
    unreachable, where tfds would retry for minutes; ``tfds:NAME`` offline or without
    --download).  A built-in one without --download: the load says so."""
    spec = c.dataset_spec
    where = c.data_dir or "tfds's data_dir (~/tensorflow_datasets)"
    if spec.source == "tfds_images":
        check_tfds_name_available(c, where)
        return
    if not c.download or spec.source not in ("cifar", "tfds") or tfds_prepared(c.dataset, c.data_dir):
        return
    if spec.source == "tfds":
        if not c.manual_dir:
            raise ConfigError(f"{c.dataset} is not prepared in {where} and cannot be downloaded: pass --manual_dir, a "
                              "folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar")
        return
    from keras_ffl.data.sources import CIFAR_ARCHIVES, find_cifar_archive

    if find_cifar_archive(c.dataset, c.resolved_data_dir):
        return
    reason = unreachable(CIFAR_HOST)
    if reason:
        raise ConfigError(f"{c.dataset} is not in {where} and {CIFAR_HOST} cannot be reached ({reason}): offline, put "
                          f"{CIFAR_ARCHIVES[c.dataset][0]} (from {CIFAR_PAGE}) in --data_dir")


def unreachable(host):
    """Why ``host``'s HTTPS port cannot be reached within 5 s, or "" if it can."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=5).close()
        return ""
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def check_tfds_name_available(c, where):
    """``tfds:NAME`` not prepared on disk, to be downloaded with the network down: refused at
    once (tfds would retry each source URL for minutes, then leave partial downloads).  tfds
    fetches from each dataset's own hosts; Google Cloud Storage, which tfds also asks for
    prepared copies, stands for "online".  Without --download: refused at once too."""
    name = c.dataset[len("tfds:"):].split("/")[0].split(":")[0]
    if tfds_prepared(name, c.data_dir):
        return
    if not c.download:
        raise ConfigError(f"cannot load tfds dataset '{name}' split '{c.train_split}': it is not prepared in {where} "
                          "(prepare it with tfds, or pass --download)")
    reason = unreachable(TFDS_HOST)
    if reason:
        raise ConfigError(f"{c.dataset} is not prepared in {where} and the network is unreachable ({TFDS_HOST}: "
                          f"{reason}): prepare it where it is (python -c \"import tensorflow_datasets as tfds; "
                          f"tfds.builder('{name}').download_and_prepare()\") and copy ~/tensorflow_datasets/{name} "
                          "into --data_dir")


def trained_run_config(model_dir, what, remedy):
    """The Config of a run that has weights (final or last checkpoint), on this process's backend
    (weights load on any); ConfigError otherwise."""
    from keras_ffl import run_dir  # the layout's owner (it imports this module at its top)

    run = dataclasses.replace(Config.load(run_dir.path(model_dir, run_dir.CONFIG)), backend="")
    if not any(os.path.exists(run_dir.path(model_dir, n)) for n in (run_dir.WEIGHTS, run_dir.LAST_CHECKPOINT)):
        raise ConfigError(f"{what} has no weights yet: {remedy}")
    return run


def check_trained_networks(flag, run_dir, dataset, backbones, num_branches):
    """A run given by ``--{flag}`` must hold trained networks of the same architectures and data."""
    trained = trained_run_config(run_dir, f"--{flag} {run_dir}", "train it first").validated(check_data=False)
    if trained.dataset != dataset:
        raise ConfigError(f"--{flag} was trained on {trained.dataset}, this run uses {dataset}")
    expected = list(backbones) * num_branches if len(backbones) == 1 else list(backbones)
    if trained.branch_backbones != expected or trained.topology != "independent":
        raise ConfigError(
            f"--{flag} holds {', '.join(trained.branch_backbones)} ({trained.topology}); "
            f"this run's networks are {', '.join(expected)} (independent)"
        )
