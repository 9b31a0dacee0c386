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

import numpy as np
import pytest

from helpers import read_weights
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

    single = parse_config(["train", *FLAGS, f"--model_dir={tmp_path / 'single'}"])
    reference = train(single)
    chief_report = json.loads((dirs[0] / "report.json").read_text())
    assert chief_report["replicas"] == 2 and reference["replicas"] == 1
    for part, row in reference["results"].items():
        assert chief_report["results"][part]["top1"] == pytest.approx(row["top1"], abs=100 / 32 + 1e-6), part
    for multi, one in zip(read_history(dirs[0]), read_history(single.model_dir)):
        for name in ("loss", "ce_net0", "ce_fused", "kd_net0"):
            assert float(multi[name]) == pytest.approx(float(one[name]), rel=1e-4), name
    multi_weights = read_weights(dirs[0] / "model.weights.h5")
    one_weights = read_weights(os.path.join(single.model_dir, "model.weights.h5"))
    assert multi_weights.keys() == one_weights.keys()
    for name, value in one_weights.items():
        np.testing.assert_allclose(multi_weights[name], value, rtol=1e-3, atol=2e-5, err_msg=name)


@pytest.mark.parametrize(
    "args,tf_config,message",
    [([], None, "needs the cluster: set TF_CONFIG"),
     (["--worker_hosts=localhost:1,localhost:2", "--task_index=2"], None, "--task_index=2 but --worker_hosts lists 2"),
     (["--worker_hosts=localhost:1"], '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
      "both TF_CONFIG and --worker_hosts"),
     ([], '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "TF_CONFIG is not a valid"),
     ([], "not json", "TF_CONFIG is not a valid")],
)
def test_cluster_errors_exit_2_before_any_work(tmp_path, monkeypatch, args, tf_config, message):
    from keras_ffl.config import ConfigError

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message):
        parse_config(["train", *FLAGS, f"--model_dir={tmp_path}", "--strategy=multi_worker", *args])


def test_worker_hosts_need_the_multi_worker_strategy(tmp_path):
    from keras_ffl.config import ConfigError

    with pytest.raises(ConfigError, match="--worker_hosts is for --strategy=multi_worker"):
        parse_config(["train", *FLAGS, f"--model_dir={tmp_path}", "--worker_hosts=localhost:1"])
