"""The reproduction suite runs end to end on a tiny budget of real data, reuses finished runs,
and writes its table, JSON and figures."""

import json
import os

import pytest

from keras_ffl.reproduce import markdown, reproduce, summarize_runs

TINY = ["--train_examples=256", "--test_examples=256", "--epochs=1", "--batch_size=64"]


def test_tiny_suite_end_to_end(tmp_path, fashion_mnist_dir, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # nested flagfiles
    out = str(tmp_path / "repro")
    results, table = reproduce("fashion_mnist", ["vanilla", "ffl"], [0, 1], out, TINY)
    assert set(results["runs"]) == {"vanilla_seed0", "vanilla_seed1", "ffl_seed0", "ffl_seed1"}
    fused = results["summary"]["ffl"]["fused"]
    assert len(fused["values"]) == 2 and fused["std"] >= 0
    assert "| ffl |" in table and "(fused)" in table and "256 Fashion-MNIST test images" in table
    for name in ("results.json", "results.md", "curves.png", "bars.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert json.load(open(os.path.join(out, "results.json")))["summary"] == results["summary"]
    # A second call reuses the finished runs: same numbers, no training.
    mtime = os.path.getmtime(os.path.join(out, "runs", "ffl_seed0", "report.json"))
    again, _ = reproduce("fashion_mnist", ["vanilla", "ffl"], [0, 1], out, TINY)
    assert again["summary"] == results["summary"]
    assert os.path.getmtime(os.path.join(out, "runs", "ffl_seed0", "report.json")) == mtime


def test_summary_mean_and_sample_std():
    reports = {("m", s): {"results": {"net0": {"top1": v}, "S-avg": {"top1": v}, "ensemble": {"top1": v}}}
               for s, v in enumerate([80.0, 82.0, 84.0])}
    summary = summarize_runs(reports)
    assert summary["m"]["S-avg"]["mean"] == pytest.approx(82.0)
    assert summary["m"]["S-avg"]["std"] == pytest.approx(2.0)  # sample std (ddof 1)
    assert "82.00 ± 2.00" in markdown(summary, [0, 1, 2], 10000)
