"""Export of the committed Fashion-MNIST zoo model: a branch and the fused model to
SavedModel, ONNX and TFLite, each matching Keras under 1e-4 on real test images; a branch
carries exactly its own parameters; the predict script runs on the exported ONNX; bad
requests and failed parity checks write nothing."""

import json
import os
import subprocess
import sys

import pytest

from helpers import run_cli
from keras_ffl import export, zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "ffl_resnet8x2_fashion_mnist"


@pytest.fixture(scope="module")
def zoo_model(fashion_mnist_dir, tmp_path_factory):
    model, config = zoo.load_method_model(NAME, cache=str(tmp_path_factory.mktemp("cache")))
    return model, config


@pytest.fixture(scope="module")
def exported(zoo_model, tmp_path_factory):
    model, config = zoo_model
    root = tmp_path_factory.mktemp("exports")
    results = {}
    for part in ("net0", "fused"):
        out = str(root / part)
        results[part] = (out, export.export(model, config, part, export.FORMATS, out, parity_examples=128,
                                            latency_runs=20, source=NAME))
    return results


@pytest.mark.parametrize("part", ["net0", "fused"])
def test_every_format_matches_keras_on_real_images(exported, part):
    out, metadata = exported[part]
    assert set(metadata["artifacts"]) == set(export.FORMATS)
    for fmt, artifact in metadata["artifacts"].items():
        assert artifact["max_abs_diff"] < 1e-4, fmt
        assert artifact["same_top1"] == 1.0, fmt
        assert os.path.exists(os.path.join(out, artifact["path"]))
    assert metadata["parity"]["keras_top1_on_these"] > 0.7  # trained weights on real images
    assert json.load(open(os.path.join(out, "metadata.json")))["part"] == part
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".partial" in f]


def test_a_branch_export_carries_only_that_branch(exported, zoo_model):
    model, config = zoo_model
    branch_parameters = model.subnetwork(0).count_params()
    net0 = exported["net0"][1]
    assert net0["keras_parameters"] == branch_parameters
    assert net0["artifacts"]["saved_model"]["parameters"] == branch_parameters
    fused = exported["fused"][1]
    assert fused["artifacts"]["saved_model"]["parameters"] > branch_parameters
    assert net0["artifacts"]["onnx"]["bytes"] < 0.75 * fused["artifacts"]["onnx"]["bytes"]


def test_predict_script_classifies_the_samples(exported):
    out, _ = exported["net0"]
    samples = sorted(os.path.join(REPO, "export", "samples", f) for f in os.listdir(os.path.join(REPO, "export", "samples")))
    result = subprocess.run([sys.executable, os.path.join(REPO, "export", "predict_onnx.py"),
                             os.path.join(out, "model.onnx"), *samples], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(samples) and all("%" in line for line in lines)
    # The samples are named by their true class; a trained net gets most of them right.
    right = sum(os.path.basename(s).split("_", 1)[1][:-4].replace("-", "") in line.split(":")[1].split(",")[0].lower()
                .replace("-", "").replace("/", "").replace(" ", "") for s, line in zip(samples, lines))
    assert right >= 3


def test_failed_parity_writes_nothing(zoo_model, tmp_path):
    model, config = zoo_model
    out = tmp_path / "strict"
    with pytest.raises(export.ParityError, match="parity check failed"):
        export.export(model, config, "net0", ["onnx"], str(out), tolerance=1e-12, parity_examples=16,
                      latency_runs=0)
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if ".partial" in f]


def test_bad_requests_exit_2_before_any_work(tmp_path):
    both = run_cli("export", f"--name={NAME}", "--model_dir=runs/x")
    assert both.returncode == 2 and "exactly one of --name" in both.stderr
    fmt = run_cli("export", f"--name={NAME}", "--formats=onnx,coreml")
    assert fmt.returncode == 2 and "unknown coreml" in fmt.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "model.onnx").write_text("an earlier export")
    taken = run_cli("export", f"--name={NAME}", f"--output_dir={tmp_path / 'taken'}")
    assert taken.returncode == 2 and "already holds an export" in taken.stderr
    assert (tmp_path / "taken" / "model.onnx").read_text() == "an earlier export"
    part = run_cli("export", f"--name={NAME}", "--part=net7", f"--output_dir={tmp_path / 'p'}", "--formats=onnx")
    assert part.returncode == 2 and "no part 'net7'" in part.stderr
