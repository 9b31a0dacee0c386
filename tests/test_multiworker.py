"""MultiWorkerMirroredStrategy from the CLI: two worker processes on loopback ports train the
same run as one process on the same global batch.

Both runs synchronise BatchNorm (a no-op on one replica), so every step sees the statistics
of the whole global batch; the pipeline keys every random draw by the example's position
in its epoch, so rebatching across workers changes neither the examples nor their crops.
What remains is the order of float additions in the all-reduce.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import assert_within_float32_noise, kl_scales, read_weights
from keras_ffl.train import parse_config, train

FLAGS = ["--dataset=synthetic", "--backbones=resnet8", "--train_examples=64", "--test_examples=32",
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


def test_two_workers_on_loopback_match_one_process(tmp_path):
    hosts = ",".join(f"localhost:{p}" for p in free_ports(2))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    dirs = [tmp_path / "cluster", tmp_path / "worker1"]  # worker 1 gets its own dir to show it writes nothing
    workers = [
        subprocess.Popen([sys.executable, "-m", "keras_ffl.train", *FLAGS, f"--model_dir={dirs[i]}",
                          "--strategy=multi_worker", f"--worker_hosts={hosts}", f"--task_index={i}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for i, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"worker {i}:\n{out[-3000:]}"
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

    def history(model_dir):
        return {f"{name} epoch {epoch}": float(value) for epoch, row in enumerate(read_history(model_dir))
                for name, value in row.items() if name in ("loss", "ce_net0", "ce_fused", "kd_net0")}

    logged = [history(d) for d in (dirs[0], single_dir, mirrored_dir, exact_dir)]
    assert_within_float32_noise(logged[0], logged[1], logged[1:3], logged[3], what="logged",
                                scales=kl_scales(logged[1], 3.0, 10))
    weights = [read_weights(os.path.join(d, "model.weights.h5")) for d in (dirs[0], single_dir, mirrored_dir, exact_dir)]
    assert_within_float32_noise(weights[0], weights[1], weights[1:3], weights[3], what="weights")
