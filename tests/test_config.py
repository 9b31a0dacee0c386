"""Config: flagfiles in zoo/ parse and hold the papers' settings; config.json round trips."""

import glob
import os

import pytest

from keras_ffl.methods import registry

from conftest import REPO
from helpers import tiny_config
from keras_ffl.config import Config, ConfigError
from keras_ffl.command_line import config_from_flags, parse_argv

FLAGFILES = sorted(glob.glob(os.path.join(REPO, "zoo", "*.flags")))


def load_flags_only(path):
    return {name: parse_argv(["train", f"--flagfile={path}"])[name].value for name in ("kd_teacher_dir",)}


def load(path, *extra):
    return config_from_flags(parse_argv(["train", f"--flagfile={path}", *extra])).validated()


def test_zoo_has_the_issue_flagfiles():
    names = {os.path.basename(p) for p in FLAGFILES}
    assert {"res32_cifar100.flags", "wrn16-2_cifar100.flags", "res32_wrn16-2_cifar100.flags",
            "quickstart_fashion_mnist.flags", "dml_res32_cifar100.flags", "one_res32_cifar100.flags",
            "vanilla_res32_cifar100.flags", "afd_res32_cifar100.flags", "afd_wrn16-2_wrn28-2_cifar100.flags",
            "ffcl_res18_cifar100.flags"} <= names
    for method in ("dml", "one", "vanilla", "afd", "ffcl", "kd"):
        assert f"quickstart_{method}_fashion_mnist.flags" in names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_every_flagfile_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # nested flagfiles are relative to the repository root
    teacher_dir = load_flags_only(path)["kd_teacher_dir"]
    if teacher_dir and not os.path.exists(os.path.join(REPO, teacher_dir, "config.json")):
        with pytest.raises(ConfigError, match="no config.json"):  # its teacher run comes first
            load(path)
        return
    config = load(path)
    assert config.num_branches >= config.options.min_branches() and config.model_dir


def test_res32_flagfile_is_the_ffl_paper_schedule():
    c = load(os.path.join(REPO, "zoo", "res32_cifar100.flags"))
    assert (c.method, c.backbones, c.num_branches, c.topology, c.dataset) == ("ffl", ("resnet32",), 2, "shared", "cifar100")
    assert (c.epochs, c.lr, c.lr_milestones, c.lr_gamma, c.momentum, c.nesterov) == (300, 0.1, (150, 225), 0.1, 0.9, True)
    assert (c.batch_size, c.eval_batch_size, c.temperature, c.rampup_epochs) == (128, 100, 3.0, 80)
    assert (c.weight_decay, c.options.fusion_weight_decay) == (1e-4, 1e-5)


def test_ffcl_flagfile_is_the_paper_setting_with_its_pretraining_stage():
    c = load(os.path.join(REPO, "zoo", "ffcl_res18_cifar100.flags"))
    assert (c.method, c.backbones, c.num_branches, c.topology) == ("ffcl", ("resnet18",), 2, "independent")
    assert (c.epochs, c.lr_milestones, c.momentum, c.nesterov, c.weight_decay, c.temperature) == (
        200, (60, 120, 160), 0.9, False, 5e-4, 1.0)
    o = c.options
    assert o.feature_knowledge and o.response_knowledge and o.regularization_knowledge
    assert o.pretrained_dir == os.path.join(c.model_dir, "pretrain")
    stage = c.pretraining_config()
    assert (stage.method, stage.epochs, stage.model_dir) == ("vanilla", 200, o.pretrained_dir)
    assert stage.branch_backbones == c.branch_backbones and stage.lr_milestones == c.lr_milestones


def test_heterogeneous_flagfile_resolves_to_independent_networks():
    c = load(os.path.join(REPO, "zoo", "res32_wrn16-2_cifar100.flags"))
    assert c.backbones == ("resnet32", "wrn16_2") and c.topology == "independent" and c.num_branches == 2


def test_command_line_overrides_the_flagfile():
    c = load(os.path.join(REPO, "zoo", "res32_cifar100.flags"), "--epochs=5", "--num_branches=3")
    assert c.epochs == 5 and c.num_branches == 3


def test_config_json_round_trip(tmp_path):
    c = load(os.path.join(REPO, "zoo", "res32_wrn16-2_cifar100.flags"))
    c.save(str(tmp_path / "config.json"))
    assert Config.load(str(tmp_path / "config.json")) == c
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file


def test_broken_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.load(str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text('{"method": "ffl", "surprise": 1}')
    with pytest.raises(ConfigError, match="unknown configuration keys: surprise"):
        Config.load(str(tmp_path / "config.json"))


def test_a_restarted_cluster_may_resume_on_other_hosts_but_not_with_another_worker_count():
    def cluster(*hosts, task_index=0):
        return Config(strategy="multi_worker", worker_hosts=hosts, task_index=task_index)

    first = cluster("a:1000", "b:1000")
    assert first.differences(cluster("c:2000", "d:2000", task_index=1)) == []
    assert first.differences(cluster("a:1000", "b:1000", "c:1000")) == ["worker_hosts"]
    assert first.differences(Config(lr=0.5, strategy="multi_worker", worker_hosts=("a:1000", "b:1000"))) == ["lr"]


def test_the_backend_is_the_chosen_one_if_installed_else_keras_json_else_the_first_installed(tmp_path, monkeypatch):
    import json

    from keras_ffl import backend

    here = {"jax", "torch"}  # a GPU host: no TensorFlow
    monkeypatch.setattr(backend, "installed", lambda name: name in here)
    monkeypatch.setattr(backend, "running", lambda: None)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert backend.resolve() == "jax"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))  # as Keras writes it
    assert backend.resolve() == "jax"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert backend.resolve() == "torch"
    assert backend.resolve("JAX") == "jax"
    with pytest.raises(ConfigError, match="the tensorflow backend is not installed here: pip install 'keras-ffl"):
        backend.resolve("tensorflow")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match="tensorflow backend is not installed"):
        backend.resolve()
    assert backend.resolve("jax") == "jax"  # the flag wins over the environment
    with pytest.raises(ConfigError, match="unknown backend 'mxnet'"):
        backend.resolve("mxnet")
    here.clear()
    monkeypatch.delenv("KERAS_BACKEND")
    with pytest.raises(ConfigError, match="no Keras backend is installed"):
        backend.resolve()


GENERAL_BAD_NUMBERS = ["--lr=nan", "--lr=inf", "--lr=0", "--temperature=nan", "--momentum=-5", "--momentum=nan",
                       "--momentum=1", "--lr_gamma=nan", "--lr_gamma=-0.1", "--lr_gamma=inf", "--weight_decay=inf",
                       "--weight_decay=-1", "--validation_fraction=nan", "--seed=-1", "--verbose=3",
                       "--cpu_devices=-1", "--task_index=-1", "--num_branches=-2", "--image_size=-1", "--lr=1e39"]


def method_bad_numbers():
    """Every float setting of every method: nan, and past float32 (each must be checked)."""
    from keras_ffl.methods.declaration import settings_of

    cases = []
    for name, declaration in registry.declarations().items():
        for field, _ in settings_of(declaration):
            if isinstance(field.default, float):
                flag = declaration.flag_name(field.name)
                cases += [(name, f"--{flag}=nan"), (name, f"--{flag}=-1e39")]
    return cases


BAD_NUMBERS = [("ffl", flag) for flag in GENERAL_BAD_NUMBERS] + method_bad_numbers() + [
    ("mcl_okd", "--mcl_okd_nce_m=1"), ("mcl_okd", "--mcl_okd_nce_k=0"), ("pcl", "--pcl_ema_decay=1"),
    ("kdcl", "--kdcl_holdout=-1"), ("ffl", "--ffl_fusion_channels=-1")]


def test_every_method_float_setting_is_among_the_refused_numbers():
    assert len(method_bad_numbers()) >= 2 * 12  # fusion decays, AFD's three, KDCL's two, MCL-OKD's five, PCL's


@pytest.mark.parametrize("method,flag", BAD_NUMBERS)
def test_every_numeric_flag_has_a_range_checked_before_any_work(method, flag):
    name = flag[2:].split("=")[0]
    with pytest.raises(ConfigError, match=f"--{name}"):
        config_from_flags(parse_argv(["train", "--dataset=synthetic", f"--method={method}", flag])).validated()


def test_a_schedule_that_overflows_float32_is_refused_before_any_work():
    """Each number finite in float32, and the learning rate it grows to as well."""
    with pytest.raises(ConfigError, match="--lr_gamma=3e\\+38 over 2 milestone.* past float32's largest"):
        config_from_flags(parse_argv(["train", "--dataset=synthetic", "--lr=10", "--lr_gamma=3e38"])).validated()
    config_from_flags(parse_argv(["train", "--dataset=synthetic", "--lr=10", "--lr_gamma=1e10"])).validated()
    # AFD's second schedule (2e-5, two milestones) too; other methods have none.
    afd = ["train", "--dataset=synthetic", "--method=afd", "--lr_milestones=1", "--lr_gamma=1e38"]
    with pytest.raises(ConfigError, match="takes the learning rate 2e-05 past"):
        config_from_flags(parse_argv(afd)).validated()
    config_from_flags(parse_argv(["train", "--dataset=synthetic", "--lr_milestones=1", "--lr_gamma=1e38"])).validated()


@pytest.mark.parametrize("command,flag", [("export", "--tolerance=nan"), ("export", "--tolerance=0"),
                                          ("export", "--latency_runs=-1"), ("export", "--parity_examples=0"),
                                          ("evaluate", "--test_examples=-5")])
def test_export_and_evaluate_refuse_numbers_out_of_range(command, flag, tmp_path, capsys):
    from keras_ffl import evaluate, export

    main = {"export": export.main, "evaluate": evaluate.main}[command]
    assert main([command, f"--model_dir={tmp_path}", flag]) == 2
    assert flag.split("=")[0] in capsys.readouterr().err


def test_a_numeric_flag_out_of_range_is_one_line_and_exit_2_from_the_command_line(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=REPO)
    for flag in ("--momentum=-5", "--lr=nan"):
        result = subprocess.run([sys.executable, "-m", "keras_ffl.train", "--method=ffl", "--dataset=synthetic", flag,
                                 f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env,
                                timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {flag.split('=')[0]} "), \
            result.stderr[-2000:]
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,preset", [(m, "") for m in registry.NAMES if m != "cl_ilr"] +
                         [("cl_ilr", "mcl_okd"), ("cl_ilr", "okddip")])
def test_a_method_has_one_default_per_setting_from_python_and_the_command_line(method, preset, tmp_path):
    """``--method=X`` with no method flags builds the model ``X(networks)`` builds: every
    setting in the model's config is the same, the temperature and ramp-up being the method's
    own (MCL-OKD and KDCL once differed: T = 3 and an 80-epoch ramp-up from the command line,
    T = 2 or no ramp-up from Python)."""
    import keras

    from keras_ffl.build import build_model, build_subnetworks, train_size_of
    from keras_ffl.methods import METHODS

    argv = ["train", f"--method={method}", "--dataset=synthetic", "--backbones=resnet8",
            f"--model_dir={tmp_path / 'run'}"] + ([f"--cl_ilr_preset={preset}"] if preset else [])
    required = {}
    if method == "kd":
        teacher = tiny_config(method="vanilla", num_branches=1, epochs=1, validation_freq=0,
                              model_dir=str(tmp_path / "teacher"))
        from keras_ffl.train import train

        train(teacher)
        argv.append(f"--teacher_dir={teacher.model_dir}")
    config = config_from_flags(parse_argv(argv)).validated()
    declaration = registry.get(method)
    own = declaration(preset=preset) if preset else declaration()
    assert (config.temperature, config.rampup_epochs) == own.distillation_defaults()
    from_cli = build_model(config, 10, (32, 32, 3)).get_config()
    networks = build_subnetworks(config, 10, (32, 32, 3))
    if method == "kd":
        required["teacher"] = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                                                keras.layers.Dense(10)])
    if method == "mcl_okd":
        required["memory_size"] = train_size_of(config)
    if preset:
        required["preset"] = preset
    from_python = METHODS[method](networks.pop("branches"), 10, trunk=networks.pop("trunk"), **networks,
                                  **required).get_config()
    settings = [k for k, v in from_cli.items() if isinstance(v, (int, float, str, bool, type(None))) and k != "name"]
    assert "temperature" in settings and "rampup_epochs" in settings
    assert {k: from_python[k] for k in settings} == {k: from_cli[k] for k in settings}
    explicit = config_from_flags(parse_argv(argv + ["--temperature=5", "--rampup_epochs=7"])).validated()
    assert (explicit.temperature, explicit.rampup_epochs) == (5.0, 7)
