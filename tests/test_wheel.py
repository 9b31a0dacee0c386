"""keras_ffl as pip installs it: a wheel built from the repository, installed into a clean
virtual environment and run from a directory that is not the clone.

The environment holds only the wheel; its dependencies (TensorFlow, Keras...) are those of
the test environment, reached through a path entry, so the check costs seconds instead of a
second TensorFlow download.  The clone itself is never on the path.
"""

import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO
from helpers import assert_starts_quietly, user_env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(folder / "dist"), REPO], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (folder / "dist").glob("keras_ffl-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    with open(os.path.join(site, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    work = folder / "elsewhere"
    work.mkdir()
    env = user_env(drop=("PYTHONPATH", "KERAS_BACKEND"), KERAS_FFL_CACHE=str(folder / "cache"))

    def run(*args, timeout=900):
        return subprocess.run([python, *args], capture_output=True, text=True, cwd=work, env=env, timeout=timeout)

    located = run("-c", "import keras_ffl, keras_ffl.paths as p; print(keras_ffl.__file__); print(p.zoo_dir())")
    assert located.returncode == 0, located.stderr
    package, zoo = located.stdout.split()
    assert package.startswith(site) and not package.startswith(REPO)
    assert zoo == os.path.join(site, "keras_ffl", "zoo_files")
    versions = run("-c", "import importlib.metadata as m, keras_ffl; print(m.version('keras-ffl'), keras_ffl.__version__)")
    installed_version, package_version = versions.stdout.split()
    assert installed_version == package_version  # one version, from the package
    return run, work


def test_zoo_lists_and_evaluates_a_published_model_from_the_wheel(installed):
    run, _ = installed
    listed = run("-m", "keras_ffl.zoo", "list")
    assert listed.returncode == 0, listed.stderr
    assert "vanilla_resnet8_fashion_mnist" in listed.stdout and "ffl_resnet8x2_fashion_mnist" in listed.stdout
    evaluated = run("-m", "keras_ffl.zoo", "evaluate", "--name=vanilla_resnet8_fashion_mnist")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert_starts_quietly(evaluated)
    assert "largest difference 0.00 points" in evaluated.stdout  # the published accuracy, back
    # The weights inside the package are used in place, and said to be: no download, no copy.
    assert "weights: bundled with keras_ffl" in evaluated.stdout and "Downloading" not in evaluated.stdout


def test_export_of_one_subnetwork_to_onnx_from_the_wheel(installed):
    run, work = installed
    exported = run("-m", "keras_ffl.export", "--name=ffl_resnet8x2_fashion_mnist", "--part=net0", "--formats=onnx",
                   "--latency_runs=0", "--parity_examples=64")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert_starts_quietly(exported)
    assert "each BatchNorm channel folded into the convolution before it" in exported.stdout
    assert (work / "exports" / "ffl_resnet8x2_fashion_mnist_net0" / "model.onnx").exists()


def test_training_from_a_flagfile_given_by_its_zoo_name(installed):
    run, work = installed
    trained = run("-m", "keras_ffl.train", "--flagfile=quickstart_dml_fashion_mnist", "--train_examples=256",
                  "--test_examples=200", "--epochs=1", "--verbose=0", "--model_dir=runs/dml")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "runs" / "dml" / "report.json").exists()
    assert "DML on fashion_mnist" in trained.stdout
    unknown = run("-m", "keras_ffl.train", "--flagfile=no_such_setting")
    assert unknown.returncode == 2 and "no zoo setting of that name" in unknown.stderr
