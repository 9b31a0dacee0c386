"""Several processes from the CLI train the same run as one process on the same global batch:
TensorFlow's MultiWorkerMirroredStrategy, and JAX's distributed runtime
(``keras.distribution.initialize``, gloo collectives on CPU), two workers on loopback ports.

Both runs synchronise BatchNorm (a no-op on one replica), so every step sees the statistics
of the whole global batch; the pipeline keys every random draw by the example's position
in its epoch, so rebatching across workers changes neither the examples nor their crops.
What remains is the order of float additions in the all-reduce, bounded by the float32 noise
measured against the float64 run (which starts from the float32 run's initial weights).
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import KILL_AT_STEP, assert_within_float32_noise, kl_scales, read_weights
from keras_ffl.train import parse_config, train

FLAGS = ["--method=ffl", "--dataset=synthetic", "--backbones=resnet8", "--train_examples=64", "--test_examples=32",
         "--batch_size=16", "--eval_batch_size=16", "--epochs=2", "--steps_per_epoch=2", "--lr=0.02",
         "--lr_milestones=1", "--rampup_epochs=2", "--sync_bn", "--validation_freq=0", "--verbose=0"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def read_history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def logged_losses(model_dir):
    """Some of the losses history.csv logged, by name and epoch."""
    return {f"{name} epoch {epoch}": float(value) for epoch, row in enumerate(read_history(model_dir))
            for name, value in row.items() if name in ("loss", "ce_net0", "ce_fused", "kd_net0")}


def run_cluster(model_dirs, *flags, backend, kill_at_step=None):
    """One ``keras_ffl.train`` worker process per model_dir on loopback ports (worker 0 the
    chief); returns their exit codes and outputs."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    hosts = ",".join(f"localhost:{p}" for p in free_ports(len(model_dirs)))
    program = ["-c", KILL_AT_STEP, str(kill_at_step)] if kill_at_step else ["-m", "keras_ffl.train"]
    workers = [
        subprocess.Popen([sys.executable, *program, *flags, f"--model_dir={model_dir}", f"--backend={backend}",
                          "--strategy=multi_worker", f"--worker_hosts={hosts}", f"--task_index={i}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, model_dir in enumerate(model_dirs)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    return [w.returncode for w in workers], outputs


def test_two_workers_on_loopback_match_one_process(tmp_path):
    dirs = [tmp_path / "cluster", tmp_path / "worker1"]  # worker 1 gets its own dir to show it writes nothing
    codes, outputs = run_cluster(dirs, *FLAGS, backend="tensorflow")
    assert codes == [0, 0], "\n".join(out[-3000:] for out in outputs)
    assert "2 replica(s)" in outputs[0]
    assert not dirs[1].exists()  # checkpoints, logs and the report come from the chief alone

    def run_alone(name, *extra):
        config = parse_config(["train", *FLAGS, f"--model_dir={tmp_path / name}", *extra])
        return config.model_dir, train(config)

    single_dir, reference = run_alone("single")
    chief_report = json.loads((dirs[0] / "report.json").read_text())
    assert chief_report["replicas"] == 2 and reference["replicas"] == 1
    for part, row in reference["results"].items():
        assert chief_report["results"][part]["top1"] == pytest.approx(row["top1"], abs=100 / 32 + 1e-6), part
    mirrored_dir, _ = run_alone("mirrored", "--strategy=mirrored", "--cpu_devices=2")
    exact_dir, _ = run_alone("float64", "--mixed_precision=float64")

    logged = [logged_losses(d) for d in (dirs[0], single_dir, mirrored_dir, exact_dir)]
    assert_within_float32_noise(logged[0], logged[1], logged[1:3], logged[3], what="logged",
                                scales=kl_scales(logged[1], 3.0, 10))
    weights = [read_weights(os.path.join(d, "model.weights.h5")) for d in (dirs[0], single_dir, mirrored_dir, exact_dir)]
    assert_within_float32_noise(weights[0], weights[1], weights[1:3], weights[3], what="weights")


def test_two_jax_processes_match_one_process_and_resume_after_kill_9(tmp_path):
    flags = [*FLAGS, "--epochs=3", "--steps_per_epoch=4", "--lr_milestones=2"]
    cluster_dir, killed_dir = tmp_path / "cluster", tmp_path / "killed"
    codes, outputs = run_cluster([cluster_dir] * 2, *flags, backend="jax")  # sharing it, as on shared storage
    assert codes == [0, 0], "\n".join(out[-3000:] for out in outputs)
    assert "2 replica(s), Keras on jax" in outputs[0]
    report = json.loads((cluster_dir / "report.json").read_text())
    assert report["replicas"] == 2 and report["backend"] == "jax"

    # kill -9 of both workers in epoch 1, then the same command: the cluster resumes from the
    # shared model_dir and ends where the uninterrupted cluster ended, bit for bit.
    codes, outputs = run_cluster([killed_dir] * 2, *flags, backend="jax", kill_at_step=6)
    assert codes[0] == -signal.SIGKILL, outputs[0][-3000:]
    assert codes[1] != 0
    assert sorted(os.listdir(killed_dir / "backup")) == ["epoch-1.weights.h5"]
    codes, outputs = run_cluster([killed_dir] * 2, *flags, backend="jax")
    assert codes == [0, 0], "\n".join(out[-3000:] for out in outputs)
    assert all("Resuming the run" in out and "after epoch 1" in out for out in outputs)
    resumed, uninterrupted = (read_weights(d / "model.weights.h5") for d in (killed_dir, cluster_dir))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)

    def run_alone(name, *extra):
        model_dir = tmp_path / name
        result = subprocess.run([sys.executable, "-m", "keras_ffl.train", *flags, f"--model_dir={model_dir}",
                                 "--backend=jax", *extra], capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
        assert result.returncode == 0, result.stderr[-3000:]
        return model_dir

    single_dir = run_alone("single")
    mirrored_dir = run_alone("mirrored", "--strategy=mirrored", "--cpu_devices=2")
    assert json.loads((mirrored_dir / "report.json").read_text())["replicas"] == 2  # --cpu_devices split JAX's CPU
    exact_dir = run_alone("float64", "--mixed_precision=float64")
    dirs = (cluster_dir, single_dir, mirrored_dir, exact_dir)
    logged = [logged_losses(d) for d in dirs]
    assert_within_float32_noise(logged[0], logged[1], logged[1:3], logged[3], what="logged",
                                scales=kl_scales(logged[1], 3.0, 10))
    weights = [read_weights(d / "model.weights.h5") for d in dirs]
    assert_within_float32_noise(weights[0], weights[1], weights[1:3], weights[3], what="weights")
