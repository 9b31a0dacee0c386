"""One home per method: the registry is the one list, each declaration the one place of its
settings, and no generic module names a method."""

import ast
import dataclasses
import glob
import inspect
import json
import os

import pytest

from keras_ffl.config import Config, ConfigError
from keras_ffl.command_line import config_from_flags, help_text, parse_argv
from keras_ffl.methods import registry
from keras_ffl.methods.declaration import settings_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERIC = [p for p in glob.glob(os.path.join(REPO, "keras_ffl", "**", "*.py"), recursive=True)
           if os.sep + "methods" + os.sep not in p]


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: os.path.relpath(p, REPO))
def test_no_generic_module_names_a_method(path):
    """A string equal to a method's name outside ``keras_ffl/methods/`` is a branch or a table
    keyed by it: the method's facts belong to its declaration."""
    tree = ast.parse(open(path).read())
    named = [(node.lineno, node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in registry.NAMES]
    assert not named, f"{os.path.relpath(path, REPO)} names methods at lines {named}"


def test_the_registry_finds_each_pair_of_files():
    declarations = registry.declarations()
    assert tuple(declarations) == registry.NAMES
    homes = {os.path.basename(p)[:-len("_options.py")]
             for p in glob.glob(os.path.join(REPO, "keras_ffl", "methods", "*_options.py"))}
    assert homes == set(registry.NAMES)  # no declaration left out of the list
    assert registry.baseline() in registry.NAMES and registry.DEFAULT in registry.NAMES


@pytest.mark.parametrize("name", registry.NAMES)
def test_the_model_takes_its_defaults_from_its_declaration(name):
    """Every constructor argument that is also a setting defaults to the declaration's value
    (``fusion_channels`` and the like: 0 in a flag, None in Python, both "the smallest")."""
    declaration = registry.get(name)
    parameters = inspect.signature(registry.model_class(name).__init__).parameters
    shared = [f for f, _ in settings_of(declaration) if f.name in parameters]
    for field in shared:
        default = parameters[field.name].default
        assert default == field.default or (field.default == 0 and default is None), (name, field.name)
    # Every setting reaches the model (or is the run's, as a path or a stage's length).
    arguments = set(declaration().model_arguments.__code__.co_names) | set(parameters)
    for field, meta in settings_of(declaration):
        assert field.name in arguments or meta.path or field.name in ("pretrain_epochs", "holdout", "feature_lr",
                                                                     "feature_lr_milestones"), (name, field.name)


def test_help_shows_the_general_flags_then_one_section_per_method():
    text = help_text(parse_argv(["train"]))
    starts = [text.index("general settings:")] + [text.index(f"--method={n}: ") for n in registry.NAMES]
    assert starts == sorted(starts)
    ffl_section = text[starts[1]:starts[2]]
    assert "--ffl_fusion:" in ffl_section and "--dml_update" not in ffl_section
    assert "--fusion:" not in text and "older flag names" in text  # old names listed, not described twice


def test_a_setting_of_another_method_is_refused():
    with pytest.raises(ConfigError, match="--afd_mode is a setting of --method=afd; this run's method is dml"):
        config_from_flags(parse_argv(["train", "--method=dml", "--afd_mode=kd"]))
    with pytest.raises(ConfigError, match=r"--fusion \(now --ffl_fusion\) is not a setting of --method=dml"):
        config_from_flags(parse_argv(["train", "--method=dml", "--fusion=average"]))


def test_older_flag_names_reach_the_method_that_has_the_setting():
    for method, flag in (("kdcl", "kdcl_ce_weight"), ("mcl_okd", "mcl_okd_ce_weight")):
        old = config_from_flags(parse_argv(["train", f"--method={method}", "--ce_weight=0.5"]))
        new = config_from_flags(parse_argv(["train", f"--method={method}", f"--{flag}=0.5"]))
        assert old == new and old.options.ce_weight == 0.5
    old = config_from_flags(parse_argv(["train", "--method=ffcl", "--noregularization_knowledge"]))
    assert old.options.regularization_knowledge is False
    with pytest.raises(ConfigError, match="same setting: give one"):
        config_from_flags(parse_argv(["train", "--method=ffl", "--fusion=average", "--ffl_fusion=module"]))


def test_enum_flags_take_any_case_and_suggest_the_nearest():
    assert config_from_flags(parse_argv(["train", "--method=FFL"])).method == "ffl"
    assert config_from_flags(parse_argv(["train", "--method=kdcl", "--kdcl_teacher=Linear"])).options.teacher == "linear"
    with pytest.raises(ConfigError, match=r"--method=fll.*did you mean 'ffl'\?"):
        parse_argv(["train", "--method=fll"])
    flags = parse_argv(["train", "--dataset=Synthetic", "--backbones=ResNet8", "--method=dml"])
    config = config_from_flags(flags).validated(check_data=False)
    assert config.dataset == "synthetic" and config.backbones == ("resnet8",)


def test_config_json_keeps_the_method_settings_under_its_name(tmp_path):
    config = Config(method="mcl_okd", nce_k=64, dataset="synthetic", model_dir=str(tmp_path)).validated()
    config.save(str(tmp_path / "config.json"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mcl_okd"]["nce_k"] == 64 and "nce_k" not in saved and "fusion" not in saved
    assert Config.load(str(tmp_path / "config.json")) == config


def test_a_config_json_from_before_methods_had_homes_loads(tmp_path):
    """Flat, every method's settings beside the general ones (what 0.2 wrote)."""
    flat = {**{k: v for k, v in Config(method="afd").to_dict().items() if k != "afd"},
            "fusion": "module", "fusion_channels": 0, "fusion_weight_decay": -1.0, "ensemble_kd": True,
            "fusion_kd": True, "dml_update": "synchronous", "afd_mode": "kd", "feature_lr": 1e-3,
            "feature_lr_milestones": [5], "feature_weight_decay": 0.1, "teacher_dir": "", "teacher_part": "net0",
            "ce_weight": 1.0, "kd_weight": 1.0, "nce_k": 16384, "ema_decay": 0.999, "kdcl_holdout": 0}
    config = Config.from_dict(flat)
    assert config.options == registry.get("afd")(mode="kd", feature_lr=1e-3, feature_lr_milestones=(5,))
    with pytest.raises(ConfigError, match="unknown configuration keys: not_a_setting"):
        Config.from_dict({**flat, "not_a_setting": 1})


def test_python_and_the_flags_build_one_config():
    assert Config(method="kdcl", teacher="linear") == Config(method="kdcl", kdcl_teacher="linear") == \
        config_from_flags(parse_argv(["train", "--method=kdcl", "--kdcl_teacher=linear"]))
    changed = dataclasses.replace(Config(method="pcl"), ema_decay=0.5)
    assert changed.options.ema_decay == 0.5
    with pytest.raises(ConfigError, match="has no setting nce_k"):
        Config(method="pcl", nce_k=5)


def test_bench_and_reproduce_iterate_the_registry():
    from keras_ffl import bench, reproduce

    standalone = [n for n, d in registry.declarations().items() if d.STANDALONE]
    assert sorted(s["method"] for s in bench.suite()) == sorted(standalone)
    assert bench.suite()[0]["method"] == registry.baseline()
    assert list(reproduce.SUITES["fashion_mnist"]["methods"])[0] == registry.baseline()
    assert set(reproduce.SUITES["fashion_mnist"]["methods"]) == set(standalone)


def test_the_api_and_the_per_method_harnesses_cover_every_registered_method():
    """A new method is in the public API by its declaration, and fails the suite until the
    harnesses that take every method (the Python API checks, the per-method harness, 1 vs 2
    replicas, the cross-backend state check) have a case for it."""
    import keras_ffl
    import test_api
    import test_cross_backend
    import test_distributed
    from helpers import METHOD_CASES

    classes = {d.MODEL.rpartition(":")[2] for d in registry.declarations().values()}
    assert classes <= set(keras_ffl.__all__) and all(getattr(keras_ffl, c).method_name for c in classes)
    assert {m.split("-")[0] for m in test_api.METHODS} == set(registry.NAMES)
    assert {case["method"] for case in test_cross_backend.CASES.values()} == set(registry.NAMES)
    assert set(METHOD_CASES) == set(registry.NAMES)  # test_every_method.py and the replica test
    assert {case["method"] for case in test_distributed.REPLICA_CASES.values()} == set(registry.NAMES)
