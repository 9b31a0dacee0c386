"""A host with JAX and no TensorFlow (the project's GPU hosts): Keras picks JAX by itself, the
quickstart trains on Fashion-MNIST, CIFAR trains from its python archive, runs and zoo models
evaluate, the benchmark runs, and export says in one line that it needs TensorFlow.

The host is this test environment with TensorFlow taken out: a virtual environment whose
site-packages links every package of this one but TensorFlow's, so every process it starts
(the benchmark's children too) runs without TensorFlow.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from conftest import REPO
from test_data import write_cifar_archive

TENSORFLOW_ITSELF = re.compile(r"^(tensorflow|tensorflow_cpu|tensorflow_intel)($|-\d.*\.dist-info$)")


@pytest.fixture(scope="module")
def python_without_tensorflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_tensorflow")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    here = sysconfig.get_paths()["purelib"]
    python = str(root / "venv" / "bin" / "python")
    there = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    for entry in os.listdir(here):
        if not TENSORFLOW_ITSELF.match(entry):
            os.symlink(os.path.join(here, entry), os.path.join(there, entry))
    return python


def run(python, *args, cwd, keras_home):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    # Keras's own config file says "tensorflow", as Keras writes it on a first import anywhere.
    os.makedirs(keras_home, exist_ok=True)
    with open(os.path.join(keras_home, "keras.json"), "w") as f:
        json.dump({"backend": "tensorflow", "floatx": "float32", "epsilon": 1e-07,
                   "image_data_format": "channels_last"}, f)
    env.update(PYTHONPATH=REPO, KERAS_HOME=str(keras_home))
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_jax_alone_trains_evaluates_benchmarks_and_refuses_export(python_without_tensorflow, tmp_path,
                                                                   fashion_mnist_dir):
    python, home = python_without_tensorflow, tmp_path / "keras_home"
    probe = run(python, "-c", "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('jax') is "
                "not None)", cwd=tmp_path, keras_home=home)
    assert probe.stdout.split() == ["None", "True"], probe.stderr[-2000:]

    quickstart = tmp_path / "quickstart"
    trained = run(python, "-m", "keras_ffl.train", "--flagfile=quickstart_fashion_mnist", "--train_examples=2000",
                  "--test_examples=500", "--epochs=1", "--batch_size=64", "--eval_batch_size=250", "--verbose=0",
                  f"--model_dir={quickstart}", cwd=tmp_path, keras_home=home)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Keras on jax" in trained.stdout
    report = json.loads((quickstart / "report.json").read_text())
    assert report["backend"] == "jax" and report["results"]["fused"]["top1"] > 20.0  # chance is 10%
    assert not (quickstart / "tensorboard").exists()  # Keras's TensorBoard writes through TensorFlow

    evaluated = run(python, "-m", "keras_ffl.evaluate", f"--model_dir={quickstart}",
                    f"--output={tmp_path / 'evaluated.json'}", cwd=tmp_path, keras_home=home)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = json.loads((tmp_path / "evaluated.json").read_text())["results"]
    assert {part: row["top1"] for part, row in rows.items()} == {
        part: row["top1"] for part, row in report["results"].items()}

    rng = np.random.default_rng(3)
    write_cifar_archive(tmp_path, "cifar10", (rng.integers(0, 255, (40, 32, 32, 3)).astype(np.uint8),
                                              rng.integers(0, 10, 40)),
                        (rng.integers(0, 255, (20, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 20)))
    cifar = run(python, "-m", "keras_ffl.train", "--method=ffl", "--dataset=cifar10", f"--data_dir={tmp_path}",
                "--backbones=resnet8", "--batch_size=20", "--eval_batch_size=20", "--epochs=1", "--verbose=0",
                "--validation_freq=0", f"--model_dir={tmp_path / 'cifar'}", cwd=tmp_path, keras_home=home)
    assert cifar.returncode == 0, cifar.stderr[-3000:]
    assert json.loads((tmp_path / "cifar" / "report.json").read_text())["test_examples"] == 20

    zoo = run(python, "-m", "keras_ffl.zoo", "evaluate", "--name=ffl_resnet8x2_fashion_mnist",
              f"--cache_dir={tmp_path / 'zoo_cache'}",
              cwd=tmp_path, keras_home=home)
    assert zoo.returncode == 0, zoo.stderr[-3000:]
    assert "| fused | 92.60 |" in zoo.stdout  # as published, from TensorFlow

    bench = run(python, "-m", "keras_ffl.bench", "--backbones=resnet8", "--batch_size=16", "--steps=2",
                "--epochs=2", cwd=tmp_path, keras_home=home)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "| jax | ffl | resnet8+resnet8 |" in bench.stdout

    export = run(python, "-m", "keras_ffl.export", f"--model_dir={quickstart}", "--part=net0",
                 f"--output_dir={tmp_path / 'export'}", cwd=tmp_path, keras_home=home)
    lines = export.stderr.strip().splitlines()
    assert export.returncode == 2 and len(lines) == 1 and "TensorFlow, which is not installed" in lines[0], \
        export.stderr
    assert not (tmp_path / "export").exists()

    asked = run(python, "-m", "keras_ffl.train", "--method=ffl", "--backend=tensorflow", f"--model_dir={tmp_path / 'tf'}",
                cwd=tmp_path, keras_home=home)
    lines = asked.stderr.strip().splitlines()
    assert asked.returncode == 2 and len(lines) == 1 and "tensorflow backend is not installed" in lines[0], \
        asked.stderr
