"""The command line: bad input exits 2 with one line before any work; a synthetic run end
to end writes its report; evaluate reproduces it; runs never overwrite each other; an
interrupted run resumes."""

import csv
import json
import os
import subprocess
import sys
import time

import keras
import pytest

from conftest import REPO
from helpers import assert_starts_quietly, run_cli, tiny_config, train_until_interrupted
from keras_ffl import run_dir
from keras_ffl.build import build_model, compile_model

TINY = [
    "--method=ffl", "--dataset=synthetic", "--backbones=resnet8", "--train_examples=64", "--test_examples=32",
    "--batch_size=16", "--eval_batch_size=16", "--epochs=2", "--lr_milestones=1", "--rampup_epochs=1", "--verbose=2",
]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--backbones=resnet33"], "unknown backbone|depth must be 6n\\+2"),
        (["--backbones=vgg19"], "unknown backbone 'vgg19'"),
        (["--num_branches=1"], "needs at least 2 sub-networks, got 1"),
        (["--dataset=fashion_mnist", "--data_dir=/nonexistent/fmnist"], "apt-get install dataset-fashion-mnist"),
        (["--no_such_flag=3"], "Unknown command line flag 'no_such_flag'"),
        (["--backbones=resnet32,wrn16_2", "--topology=shared"], "topology=shared needs one architecture"),
        (["--backbones=resnet32,wrn16_2", "--num_branches=3"], "--num_branches=3 but --backbones lists 2"),
        (["--flagfile=/nonexistent.flags"], "nonexistent.flags"),
        (["--method=nope"], "method"),
        (["--method=ffcl", "--nofeature_knowledge", "--noresponse_knowledge", "--noregularization_knowledge"],
         "use --method=vanilla"),
        (["--lr_milestones=200,100"], "increasing"),
        (["--epochs=0"], "--epochs must be positive"),
        (["--dataset=imagenet2012", "--backbones=resnet18", "--manual_dir=/nonexistent/ilsvrc"],
         "--manual_dir /nonexistent/ilsvrc does not exist"),
        (["--manual_dir=/tmp"], "--manual_dir is for tfds datasets; fashion_mnist does not use it"),
        (["--method=dml", "--init_dir=/nonexistent/run"], "no config.json in /nonexistent/run"),
        (["--method=okddip", "--num_branches=2"], "at least 3"),
        (["--method=kdcl", "--kdcl_teacher=general"], "needs --kdcl_holdout"),
        (["--method=pcl", "--topology=independent"], "does not support --topology=independent"),
        (["--method=cl_ilr", "--backbones=resnet8,wrn10_1"], "needs the same architecture"),
        (["--method=mcl_okd", "--nce_m=1.5"], "nce_m"),
        (["--method=kdcl", "--dataset=folder"], "--dataset=folder needs --data_dir"),
    ],
)
def test_bad_flags_exit_2_with_one_line_before_any_work(tmp_path, args, message):
    model_dir = tmp_path / "run"
    started = time.time()
    result = run_cli("train", "--method=ffl", f"--model_dir={model_dir}", *args)  # a later --method wins
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not model_dir.exists()
    assert time.time() - started < 20  # rejected before TensorFlow builds anything


def test_cli_end_to_end_then_evaluate_gives_the_same_numbers(tmp_path):
    model_dir = tmp_path / "run"
    result = run_cli("train", f"--model_dir={model_dir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model_dir / "report.json").read_text())
    assert set(report["results"]) == {"net0", "net1", "S-avg", "ensemble", "fused"}
    assert report["config"]["method"] == "ffl" and report["test_examples"] == 32
    assert report["train_img_per_sec"] is None or report["train_img_per_sec"] > 0
    for name in ("config.json", "model.weights.h5", "checkpoints/last.weights.h5", "history.csv"):
        assert (model_dir / name).exists(), name
    assert not (model_dir / "backup").exists()  # BackupAndRestore cleans up after a finished run
    assert "| fused |" in result.stdout and "| S-avg |" in result.stdout
    s_avg = report["results"]["S-avg"]["top1"]
    assert s_avg == pytest.approx((report["results"]["net0"]["top1"] + report["results"]["net1"]["top1"]) / 2)

    evaluated = run_cli("evaluate", f"--model_dir={model_dir}", f"--output={tmp_path / 'eval.json'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((tmp_path / "eval.json").read_text())["results"]
    for part, row in report["results"].items():
        assert again[part]["top1"] == pytest.approx(row["top1"], abs=1e-6), part

    # A finished run is never overwritten, and a different config never mixes into it.
    before = (model_dir / "model.weights.h5").stat().st_mtime_ns
    rerun = run_cli("train", f"--model_dir={model_dir}", *TINY)
    assert rerun.returncode == 2 and "finished run" in rerun.stderr
    other = run_cli("train", f"--model_dir={model_dir}", *TINY, "--lr=0.05")
    assert other.returncode == 2 and "differs in: lr" in other.stderr
    assert (model_dir / "model.weights.h5").stat().st_mtime_ns == before


@pytest.mark.parametrize("module", ["train", "evaluate"])
def test_help_lists_flags_and_exits_0(module):
    result = run_cli(module, "--help")
    assert result.returncode == 0
    assert f"python -m keras_ffl.{module}" in result.stdout and "--model_dir" in result.stdout


def test_evaluate_errors(tmp_path):
    missing = run_cli("evaluate", f"--model_dir={tmp_path}")
    assert missing.returncode == 2 and "no config.json" in missing.stderr
    no_dir = run_cli("evaluate")
    assert no_dir.returncode == 2 and "--model_dir is required" in no_dir.stderr


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    from keras_ffl.train import train

    config = tiny_config(epochs=4, model_dir=str(tmp_path / "run"), rampup_epochs=2, lr_milestones=(2,))
    train_until_interrupted(config, after_epoch=1)
    assert os.path.exists(run_dir.path(config.model_dir, run_dir.BACKUP))
    assert not os.path.exists(run_dir.path(config.model_dir, run_dir.REPORT))
    assert run_dir.claim(config) is True

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.iterations = int(self.model.optimizer.iterations.numpy())
            self.epoch = float(self.model.epoch.numpy())

        def on_epoch_begin(self, epoch, logs=None):
            self.first_epoch = getattr(self, "first_epoch", epoch)
            if epoch == 2:  # the milestone epoch: its first step already runs at the decayed rate
                self.lr = float(self.model.optimizer.learning_rate.numpy())

    record = Record()
    report = train(config, extra_callbacks=[record])
    steps = 4  # 64 examples / batch 16
    assert record.iterations == 2 * steps  # optimiser state came back with the weights
    assert record.first_epoch == 2
    assert record.lr == pytest.approx(0.1 * 0.1)  # the iteration-based schedule resumed past its milestone
    with open(run_dir.path(config.model_dir, run_dir.HISTORY)) as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]
    assert set(report["results"]) >= {"net0", "fused"}


class PoisonAtEpoch(keras.callbacks.Callback):
    """Makes the loss NaN from the first batch of ``epoch`` on."""

    def __init__(self, epoch):
        super().__init__()
        self.poison_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.poison_epoch - 1:
            self.good = [w.copy() for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.poison_epoch:
            kernel = self.model.branches[0].get_layer("classifier").kernel
            kernel.assign(kernel * float("nan"))


def test_a_nan_loss_stops_the_run_and_the_last_good_checkpoint_survives(tmp_path):
    import numpy as np

    from keras_ffl.train import train

    config = tiny_config(epochs=3, model_dir=str(tmp_path / "run"), validation_freq=0)
    poison = PoisonAtEpoch(1)
    message = r"NaN or inf in epoch 2; the last good checkpoint is in .*run: backup/epoch-1.weights.h5 \(after epoch 1\)"
    with pytest.raises(FloatingPointError, match=message):
        train(config, extra_callbacks=[poison])
    assert not os.path.exists(run_dir.path(config.model_dir, run_dir.REPORT))
    model = build_model(config, 10, (32, 32, 3))
    compile_model(model, config, 4)
    for name in (run_dir.LAST_CHECKPOINT, os.path.join(run_dir.BACKUP, "epoch-1.weights.h5")):
        model.load_weights(run_dir.path(config.model_dir, name))
        weights = model.get_weights()
        assert all(np.isfinite(w).all() for w in weights), name
        for saved, good in zip(weights, poison.good):  # the state at the end of epoch 0
            np.testing.assert_allclose(saved, good, rtol=1e-6, atol=1e-7)


def test_a_corrupt_resume_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from keras_ffl.train import train

    config = tiny_config(epochs=4, model_dir=str(tmp_path / "run"), validation_freq=0)

    train_until_interrupted(config, after_epoch=1)
    latest = run_dir.path(config.model_dir, os.path.join(run_dir.BACKUP, "epoch-2.weights.h5"))
    assert os.path.exists(run_dir.path(config.model_dir, os.path.join(run_dir.BACKUP, "epoch-1.weights.h5")))
    with open(latest, "r+b") as f:  # damaged on disk: the file's second half is gone
        f.truncate(os.path.getsize(latest) // 2)

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.first_epoch = getattr(self, "first_epoch", epoch)

    record = Record()
    report = train(config, extra_callbacks=[record])
    assert record.first_epoch == 1  # resumed from the end of epoch 0, the previous good checkpoint
    assert report["results"]["net0"]["top1"] >= 0


def test_a_dataset_not_on_disk_fails_at_once_offline_saying_how_to_supply_it_and_creates_nothing(tmp_path,
                                                                                                  monkeypatch):
    import socket
    import time

    from keras_ffl.config import ConfigError
    from keras_ffl.train import parse_config

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where tfds would put its downloads
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    started = time.time()
    with pytest.raises(ConfigError, match=r"cifar100 is not in tfds's data_dir .* www.cs.toronto.edu cannot be reached "
                                          r"\(Name or service not known\): offline, put cifar-100-python.tar.gz .* in "
                                          "--data_dir"):
        parse_config(["train", "--flagfile=res32_cifar100", f"--model_dir={tmp_path / 'run'}"])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match=f"cifar10 is not in {data} and"):
        parse_config(["train", "--method=ffl", "--dataset=cifar10", f"--data_dir={data}", f"--model_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="imagenet2012 is not prepared in .* pass --manual_dir"):
        parse_config(["train", "--flagfile=ffl_res34_imagenet", f"--model_dir={tmp_path / 'run'}"])
    assert time.time() - started < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and not list(data.iterdir())


# ------------------------------------------------------------------ the first hour
def test_a_bare_train_command_shows_where_to_start_and_trains_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "keras_ffl.train"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 2 and result.stdout == ""
    assert "Start from one of these" in result.stderr
    for start in ("--flagfile=quickstart_fashion_mnist", "--flagfile=res32_cifar100", "--dataset=folder"):
        assert start in result.stderr
    assert not list(tmp_path.iterdir())  # no runs/ folder
    helped = run_cli("train", "--help")
    assert helped.returncode == 0 and helped.stdout.index("Start from one of these") < helped.stdout.index(
        "general settings:") < helped.stdout.index("--method=ffl: FFL")


def test_a_misspelt_method_flagfile_dataset_or_backbone_names_the_nearest(tmp_path):
    for flag, nearest in (("--method=fll", "ffl"), ("--dataset=fashion_mnst", "fashion_mnist"),
                          ("--backbones=resnt32", "resnet32")):
        result = run_cli("train", "--method=ffl", flag, f"--model_dir={tmp_path / 'run'}")
        assert result.returncode == 2 and f"did you mean '{nearest}'?" in result.stderr, (flag, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    flagfile = run_cli("train", "--flagfile=res32_cifar10", f"--model_dir={tmp_path / 'run'}")
    line = flagfile.stderr.strip()
    assert flagfile.returncode == 2 and "nearest zoo settings: res32_cifar100," in line and len(line) < 300
    assert not (tmp_path / "run").exists()


def test_training_to_a_pipe_prints_one_plain_line_per_epoch_and_starts_quietly(tmp_path):
    model_dir = tmp_path / "run"
    result = run_cli("train", f"--model_dir={model_dir}", *[f for f in TINY if f != "--verbose=2"], "--verbose=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_starts_quietly(result)
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "\r" not in result.stdout and "\x1b" not in result.stdout and "ce_net0" not in result.stdout
    assert all(len(line) < 200 for line in result.stdout.splitlines()), max(map(len, result.stdout.splitlines()))
    assert "top-1 % net0" in epochs[0] and "test loss" in epochs[1]
    header = (model_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"ce_net0", "ce_fused", "kd_fused", "kd_net1", "acc_net0", "val_acc_fused"} <= set(header)
    evaluated = run_cli("evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0 and "| fused |" in evaluated.stdout
    assert_starts_quietly(evaluated)


def test_the_progress_bar_shows_the_loss_and_each_part_accuracy_not_every_term(capsys):
    import numpy as np

    from keras_ffl import FFL, backbones
    from keras_ffl.callbacks import ConciseProgbar

    trunk, heads = backbones.build_branches("resnet8", (16, 16, 3), 4, num_branches=2)
    model = FFL(heads, trunk=trunk)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x, y = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype("float32"), np.arange(32) % 4
    history = model.fit(x, y, batch_size=16, epochs=1)  # fit's default: captured output is no terminal
    shown = capsys.readouterr().out
    assert shown.startswith("epoch 1/1: ") and "top-1 % net0" in shown and shown.count("\n") == 1
    assert "\x1b" not in shown and "\r" not in shown
    assert {"ce_net0", "kd_fused", "acc_fused"} <= set(history.history)  # every term kept
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[ConciseProgbar(terminal=True)])  # as on a terminal
    bar = capsys.readouterr().out
    assert "acc_net0" in bar and "loss" in bar and "ce_net0" not in bar and "kd_fused" not in bar
