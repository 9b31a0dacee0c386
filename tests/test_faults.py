"""The fault catalogue: each fault a user can meet, and that nothing is lost to it.

Elsewhere: a NaN loss and a damaged resume checkpoint (test_cli.py), a finished or different
run in model_dir (test_cli.py), interrupted exports and zoo downloads (test_export.py,
test_zoo.py), corrupt data records (test_data.py).
"""

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import KILL_AT_STEP, read_weights, tiny_config, train_until_interrupted
from keras_ffl import run_dir
from keras_ffl.config import ConfigError

FLAGS = ["--dataset=synthetic", "--backbones=resnet8", "--train_examples=64", "--test_examples=32",
         "--batch_size=16", "--eval_batch_size=16", "--epochs=3", "--rampup_epochs=2", "--lr_milestones=2",
         "--lr=0.05", "--validation_freq=0", "--verbose=0"]


def run(*args, backend="tensorflow"):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("backend,method_flags", [
    ("tensorflow", ["--method=ffl"]), ("jax", ["--method=ffl"]),
    # memory banks, contrast indices drawn by the pipeline and one augmented view per peer
    ("tensorflow", ["--method=mcl_okd", "--num_branches=3", "--nce_k=6"]),
    ("jax", ["--method=pcl", "--num_branches=3"]),
], ids=["ffl-tensorflow", "ffl-jax", "mcl_okd-tensorflow", "pcl-jax"])
def test_kill_9_mid_epoch_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path, backend, method_flags):
    import json

    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    # 4 steps per epoch: step 6 is the middle of epoch 1 (the second), after the ramp-up and
    # before the learning-rate milestone, with augmentation and shuffling on.
    flags_ = [*FLAGS, *method_flags]
    killed = run("-c", KILL_AT_STEP, "6", *flags_, f"--model_dir={killed_dir}", backend=backend)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (killed_dir / "report.json").exists()
    assert sorted(os.listdir(killed_dir / "backup")) == ["epoch-1.weights.h5"]

    resumed = run("-m", "keras_ffl.train", *flags_, f"--model_dir={killed_dir}", backend=backend)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming the run" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert f"Keras on {backend}" in resumed.stdout
    clean = run("-m", "keras_ffl.train", *flags_, f"--model_dir={clean_dir}", backend=backend)
    assert clean.returncode == 0, clean.stderr[-2000:]

    a, b = read_weights(killed_dir / "model.weights.h5"), read_weights(clean_dir / "model.weights.h5")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    reports = [json.loads((d / "report.json").read_text()) for d in (killed_dir, clean_dir)]
    assert reports[0]["results"] == reports[1]["results"]
    with open(killed_dir / "history.csv") as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1", "2"]


def test_an_unwritable_model_dir_is_one_line_and_exit_2_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run("-m", "keras_ffl.train", *FLAGS, f"--model_dir={blocker / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not writable: Not a directory" in lines[0]
    if os.getuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        denied = run("-m", "keras_ffl.train", *FLAGS, f"--model_dir={locked / 'run'}")
        assert denied.returncode == 2 and "Permission denied" in denied.stderr


def test_too_little_disk_space_is_refused_before_training(tmp_path, monkeypatch):
    import collections
    import shutil

    from keras_ffl.train import train

    config = tiny_config(model_dir=str(tmp_path / "run"))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(ConfigError, match=r"not enough disk space for .*run: its checkpoints need about [1-9]\d* MB, 0 MB free"):
        train(config)
    assert not os.path.exists(run_dir.path(config.model_dir, run_dir.CONFIG))


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    import keras

    from keras_ffl.errors import WriteError
    from keras_ffl.train import train

    config = tiny_config(epochs=3, model_dir=str(tmp_path / "run"), validation_freq=0)
    real_save = keras.Model.save_weights
    saved = []

    def save_until_the_disk_fills(self, path, *args, **kwargs):
        if len(saved) >= 2:  # epoch 0's two checkpoints fit; epoch 1's do not
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(path)
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", save_until_the_disk_fills)
    with pytest.raises(WriteError, match="No space left on device; the previous file there is intact"):
        train(config)
    backup = run_dir.path(config.model_dir, run_dir.BACKUP)
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5"]  # no temporary leftovers
    monkeypatch.undo()
    resumed = train(config)  # space again: the same command resumes after epoch 0
    assert set(resumed["results"]) >= {"net0", "fused"}


def test_init_dir_starts_the_networks_from_a_finished_run(tmp_path):
    import keras

    from keras_ffl.train import train

    vanilla = tiny_config(method="vanilla", backbones=("resnet8", "wrn10_1"), model_dir=str(tmp_path / "vanilla"))
    train(vanilla)

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = [b.get_weights() for b in self.model.branches]

    first = FirstWeights()
    dml = tiny_config(method="dml", backbones=("resnet8", "wrn10_1"), init_dir=vanilla.model_dir,
                      model_dir=str(tmp_path / "dml"))
    train(dml, extra_callbacks=[first])
    from keras_ffl.build import load_run

    trained, _ = load_run(vanilla.model_dir)
    for started, source in zip(first.weights, trained.branches):
        for a, b in zip(started, source.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="--init_dir holds resnet8, wrn10_1 .*this run's networks are wrn10_1, resnet8"):
        tiny_config(method="dml", backbones=("wrn10_1", "resnet8"), init_dir=vanilla.model_dir)
    with pytest.raises(ConfigError, match="--init_dir starts independent networks"):
        tiny_config(method="ffl", init_dir=vanilla.model_dir)


def test_when_no_resume_checkpoint_reads_the_run_stops_and_keeps_them(tmp_path):
    from keras_ffl.errors import ResumeError
    from keras_ffl.train import train

    config = tiny_config(epochs=4, model_dir=str(tmp_path / "run"), validation_freq=0)

    train_until_interrupted(config, after_epoch=1)
    backup = run_dir.path(config.model_dir, run_dir.BACKUP)
    sizes = {}
    for name in os.listdir(backup):
        with open(os.path.join(backup, name), "r+b") as f:
            f.truncate(1000)
        sizes[name] = 1000
    with pytest.raises(ResumeError, match="no resume checkpoint in .*backup can be read; move that folder away"):
        train(config)
    assert {n: os.path.getsize(os.path.join(backup, n)) for n in os.listdir(backup)} == sizes


def test_a_second_live_run_in_a_model_dir_is_refused_and_a_killed_ones_lock_is_not_kept(tmp_path):
    import json
    import time

    model_dir = tmp_path / "run"
    flags = [f for f in FLAGS if not f.startswith("--epochs")] + ["--epochs=400", f"--model_dir={model_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen([sys.executable, "-m", "keras_ffl.train", *flags], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (model_dir / "config.json").exists():  # it holds the lock and is training
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.5)
        assert json.loads((model_dir / run_dir.LOCK).read_text())["pid"] == first.pid
        files = sorted(p.name for p in model_dir.iterdir())
        second = run("-m", "keras_ffl.train", *flags)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"is in use by a live run (process {first.pid} on " in lines[0]
        assert set(files) <= {p.name for p in model_dir.iterdir()}  # nothing of the live run was touched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The lock file still names the dead process, but the operating system dropped its lock
    # with it: the next run takes the model_dir.
    assert json.loads((model_dir / run_dir.LOCK).read_text())["pid"] == first.pid
    with run_dir.locked(str(model_dir)):
        assert json.loads((model_dir / run_dir.LOCK).read_text())["pid"] == os.getpid()
