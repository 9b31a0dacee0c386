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
from keras_ffl.config import Config, ConfigError

FLAGS = ["--method=ffl", "--dataset=synthetic", "--backbones=resnet8", "--train_examples=64", "--test_examples=32",
         "--batch_size=16", "--eval_batch_size=16", "--epochs=3", "--rampup_epochs=2", "--lr_milestones=2",
         "--lr=0.05", "--validation_freq=0", "--verbose=0"]


def run(*args, backend="tensorflow"):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("backend,method_flags", [
    ("tensorflow", ["--method=ffl"]),
    # memory banks, contrast indices drawn by the pipeline and one augmented view per peer
    ("tensorflow", ["--method=mcl_okd", "--num_branches=3", "--nce_k=6"]),
    # JAX's engine (its state outside the variables, a temporal mean moved after the step)
    ("jax", ["--method=pcl", "--num_branches=3"]),
], ids=["ffl-tensorflow", "mcl_okd-tensorflow", "pcl-jax"])
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


class InterruptAtTrainEnd:
    """A kill between the end of fit and the run's report, where Keras's BackupAndRestore
    removed the resume checkpoints (the final evaluation and saves run there)."""

    def __new__(cls):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                raise KeyboardInterrupt("killed after fit, before the report")

        return Callback()


def history_epochs(model_dir):
    import csv

    with open(run_dir.path(model_dir, run_dir.HISTORY), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_a_run_killed_after_its_last_epoch_resumes_there_instead_of_retraining(tmp_path, capsys):
    from keras_ffl.train import train

    config = tiny_config(epochs=3, model_dir=str(tmp_path / "run"), validation_freq=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[InterruptAtTrainEnd()])
    assert not os.path.exists(run_dir.path(config.model_dir, run_dir.REPORT))
    trained = read_weights(run_dir.path(config.model_dir, run_dir.LAST_CHECKPOINT))
    capsys.readouterr()
    train(config)
    assert "after epoch 3" in capsys.readouterr().out
    assert history_epochs(config.model_dir) == [0, 1, 2]
    final = read_weights(run_dir.path(config.model_dir, run_dir.WEIGHTS))
    for name in trained:  # the trained weights, not a second training from scratch
        np.testing.assert_array_equal(final[name], trained[name], err_msg=name)
    assert not os.path.exists(run_dir.path(config.model_dir, run_dir.BACKUP))  # a finished run needs none


def test_history_csv_holds_one_row_per_finished_epoch_after_any_resume(tmp_path, monkeypatch):
    from keras_ffl.callbacks import ResumeCheckpoint
    from keras_ffl.train import train

    # A kill right after epoch 1's resume checkpoint is written.
    config = tiny_config(epochs=3, model_dir=str(tmp_path / "killed"), validation_freq=0)
    real_save = ResumeCheckpoint._save_model

    def save_then_die(self):
        real_save(self)
        if self._current_epoch == 2:
            raise KeyboardInterrupt("killed after the resume checkpoint")

    monkeypatch.setattr(ResumeCheckpoint, "_save_model", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    train(config)
    assert history_epochs(config.model_dir) == [0, 1, 2]

    # The newest resume checkpoint is damaged: the run falls back to the one before and
    # trains that epoch again.
    config = tiny_config(epochs=3, model_dir=str(tmp_path / "fallback"), validation_freq=0)
    train_until_interrupted(config, after_epoch=1)
    assert history_epochs(config.model_dir) == [0, 1]
    latest = run_dir.path(config.model_dir, os.path.join(run_dir.BACKUP, "epoch-2.weights.h5"))
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    train(config)
    assert history_epochs(config.model_dir) == [0, 1, 2]


def test_a_blow_up_on_an_epochs_last_step_is_not_saved_as_a_good_checkpoint(tmp_path):
    from keras_ffl.train import train

    # Epoch 1's single step runs at lr 0.05 * 1e38: its loss (computed before the update) is
    # finite, the weights after it are not.
    config = tiny_config(epochs=3, steps_per_epoch=1, lr=0.05, lr_milestones=(1,), lr_gamma=1e38,
                         model_dir=str(tmp_path / "run"), validation_freq=0)
    message = (r"NaN or inf in epoch 2; the last good checkpoint is in .*run: backup/epoch-1.weights.h5 "
               r"\(after epoch 1\)")
    with pytest.raises(FloatingPointError, match=message):
        train(config)
    backup = run_dir.path(config.model_dir, run_dir.BACKUP)
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5"]
    for path in (os.path.join(backup, "epoch-1.weights.h5"), run_dir.path(config.model_dir, run_dir.LAST_CHECKPOINT)):
        assert all(np.isfinite(v).all() for v in read_weights(path).values() if v.dtype.kind == "f"), path
    with pytest.raises(FloatingPointError, match=message):  # the rerun resumes from the good one
        train(config)

    config = tiny_config(epochs=2, steps_per_epoch=1, lr=1e38, model_dir=str(tmp_path / "first"), validation_freq=0)
    with pytest.raises(FloatingPointError, match="NaN or inf in epoch 1, before any epoch ended with finite weights: "
                                                 "no checkpoint was saved"):
        train(config)


def test_an_interrupted_run_resumes_however_its_model_dir_is_spelled_or_wherever_it_moved(tmp_path, monkeypatch,
                                                                                           capsys):
    import dataclasses

    from helpers import replace
    from keras_ffl.train import train

    config = tiny_config(epochs=2, model_dir=str(tmp_path / "run"), validation_freq=0)
    train_until_interrupted(config, after_epoch=0)
    monkeypatch.chdir(tmp_path)
    for spelling in (str(tmp_path / "run") + "/", "run", "./run/"):
        assert run_dir.claim(replace(config, model_dir=spelling)) is True
    os.rename(tmp_path / "run", tmp_path / "moved")
    capsys.readouterr()
    report = train(replace(config, model_dir="moved"))
    assert "Resuming the run in moved after epoch 1" in capsys.readouterr().out
    assert history_epochs("moved") == [0, 1] and set(report["results"]) >= {"net0", "fused"}
    # FFCL's default pre-training folder lives inside the run: it moves with it.
    ffcl = Config(method="ffcl", dataset="synthetic", backbones=("resnet8",), model_dir=str(tmp_path / "a"))
    ffcl = ffcl.validated(check_data=False)
    assert ffcl.options.pretrained_dir == str(tmp_path / "a" / "pretrain")
    ffcl.save(str(tmp_path / "a" / "config.json"))
    moved = dataclasses.replace(ffcl, model_dir=str(tmp_path / "b"), pretrained_dir="").validated(check_data=False)
    os.rename(tmp_path / "a", tmp_path / "b")
    assert run_dir.claim(moved) is True
    with pytest.raises(ConfigError, match="differs in: ffcl_pretrained_dir"):
        run_dir.claim(dataclasses.replace(moved, pretrained_dir=str(tmp_path / "elsewhere")))


def dead_pid():
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_writes_go_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import keras

    from keras_ffl import zoo
    from keras_ffl.errors import WriteError
    from keras_ffl.train import train

    config = tiny_config(epochs=2, model_dir=str(tmp_path / "run"), validation_freq=0)
    train_until_interrupted(config, after_epoch=0)
    leftovers = [run_dir.path(config.model_dir, name) for name in (
        os.path.join(run_dir.BACKUP, "epoch-2.tmp99999.weights.h5"), "checkpoints/last.tmp4242.weights.h5",
        "config.json.tmp-777", "report.json.tmp-31337")]
    for leftover in leftovers:
        with open(leftover, "wb") as f:
            f.write(b"half a file")
    train(config)
    assert not [p for p in leftovers if os.path.exists(p)]

    # A killed zoo download's partial file goes with the next download; a live one's stays.
    cache = tmp_path / "cache"
    cache.mkdir()
    dead, live = cache / f"x.weights.h5.partial{dead_pid()}", cache / f"y.weights.h5.partial{os.getppid()}"
    dead.write_bytes(b"partial")
    live.write_bytes(b"partial")
    manifest = {"format": 1, "models": {"m": {"weights": None, "flagfile": "f"}}, "_path": str(tmp_path / "m.json")}
    with pytest.raises(zoo.ZooError, match="no published weights"):
        zoo.download("m", manifest, cache=str(cache))
    manifest["models"]["m"]["weights"] = {"url": "m.weights.h5", "sha256": "0" * 64, "size": 1}
    with pytest.raises(zoo.ZooError):
        zoo.download("m", manifest, base_url=(tmp_path / "nowhere").as_uri() + "/", cache=str(cache))
    assert not dead.exists() and live.exists()

    # h5py's own message for a full disk spans two lines and names the temporary file.
    def full_disk(self, path, *args, **kwargs):
        error = OSError(errno.ENOSPC, f"Unable to synchronously create file (file write failed: time = Fri Dec  4 "
                        f"02:31:34 2026\n, filename = '{path}', errno = 28, error message = 'No space left on device')")
        raise error

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    config = tiny_config(epochs=1, model_dir=str(tmp_path / "full"), validation_freq=0)
    with pytest.raises(WriteError) as error:
        train(config)
    assert str(error.value) == (f"cannot write {run_dir.path(config.model_dir, 'backup/epoch-1.weights.h5')}: "
                                "No space left on device; the previous file there is intact")


def test_evaluate_says_when_it_scores_an_unfinished_run(tmp_path, capsys):
    from keras_ffl.evaluate import evaluate

    config = tiny_config(epochs=3, model_dir=str(tmp_path / "run"), validation_freq=0)
    train_until_interrupted(config, after_epoch=0)
    capsys.readouterr()
    evaluate(config.model_dir)
    assert (f"note: {config.model_dir} is an unfinished run, interrupted: scoring checkpoints/last.weights.h5 "
            "(after epoch 1 of 3)") in capsys.readouterr().err
    with run_dir.locked(config.model_dir):  # a live run holds it
        evaluate(config.model_dir)
    assert f"is an unfinished run, still training (process {os.getpid()} on " in capsys.readouterr().err
