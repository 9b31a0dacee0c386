"""Config: flagfiles in zoo/ parse and hold the papers' settings; config.json round trips."""

import glob
import os

import pytest

from keras_ffl.specs import METHODS as METHOD_SPECS

from conftest import REPO
from keras_ffl.config import Config, ConfigError, config_from_flags, parse_argv

FLAGFILES = sorted(glob.glob(os.path.join(REPO, "zoo", "*.flags")))


def load_flags_only(path):
    return {name: parse_argv(["train", f"--flagfile={path}"])[name].value for name in ("teacher_dir",)}


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
    teacher_dir = load_flags_only(path)["teacher_dir"]
    if teacher_dir and not os.path.exists(os.path.join(REPO, teacher_dir, "config.json")):
        with pytest.raises(ConfigError, match="no config.json"):  # its teacher run comes first
            load(path)
        return
    config = load(path)
    assert config.num_branches >= METHOD_SPECS[config.method].min_branches and config.model_dir


def test_res32_flagfile_is_the_ffl_paper_schedule():
    c = load(os.path.join(REPO, "zoo", "res32_cifar100.flags"))
    assert (c.method, c.backbones, c.num_branches, c.topology, c.dataset) == ("ffl", ("resnet32",), 2, "shared", "cifar100")
    assert (c.epochs, c.lr, c.lr_milestones, c.lr_gamma, c.momentum, c.nesterov) == (300, 0.1, (150, 225), 0.1, 0.9, True)
    assert (c.batch_size, c.eval_batch_size, c.temperature, c.rampup_epochs) == (128, 100, 3.0, 80)
    assert (c.weight_decay, c.fusion_weight_decay) == (1e-4, 1e-5)


def test_ffcl_flagfile_is_the_paper_setting_with_its_pretraining_stage():
    c = load(os.path.join(REPO, "zoo", "ffcl_res18_cifar100.flags"))
    assert (c.method, c.backbones, c.num_branches, c.topology) == ("ffcl", ("resnet18",), 2, "independent")
    assert (c.epochs, c.lr_milestones, c.momentum, c.nesterov, c.weight_decay, c.temperature) == (
        200, (60, 120, 160), 0.9, False, 5e-4, 1.0)
    assert c.feature_knowledge and c.response_knowledge and c.regularization_knowledge
    assert c.pretrained_dir == os.path.join(c.model_dir, "pretrain")
    stage = c.pretraining_config()
    assert (stage.method, stage.epochs, stage.model_dir, stage.pretrained_dir) == ("vanilla", 200, c.pretrained_dir, "")
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
