"""A short FFL run on real Fashion-MNIST learns (small subset, tiny backbone)."""

import pytest

from helpers import tiny_config


def test_ffl_learns_real_fashion_mnist(tmp_path, fashion_mnist_dir):
    from keras_ffl.train import train

    config = tiny_config(
        dataset="fashion_mnist",
        data_dir=fashion_mnist_dir,
        train_examples=4000,
        test_examples=1000,
        epochs=2,
        batch_size=64,
        eval_batch_size=250,
        lr=0.1,
        lr_milestones=(1,),
        rampup_epochs=1,
        validation_freq=0,
        model_dir=str(tmp_path / "run"),
    )
    report = train(config)
    results = report["results"]
    # Learned: chance is 10%.  Two short epochs on 4k images reached 69-74% here (two CPUs), but
    # the same run's seeds spread over 58-73% on JAX (test_jax_runs.py): a threshold at 60 sits
    # inside that spread, and rounding on another CPU moves a run as another seed does.
    for part in ("net0", "net1", "ensemble", "fused"):
        assert results[part]["top1"] > 40.0, (part, results[part])
    assert results["S-avg"]["top1"] == pytest.approx((results["net0"]["top1"] + results["net1"]["top1"]) / 2)


@pytest.mark.slow
def test_the_readme_quickstart_reaches_the_readme_figures(tmp_path, fashion_mnist_dir):
    """The README's first command as written (FFL, 10,000 images, 6 epochs: 2-3 minutes on 2
    cores, so not in the default suite; ``pytest -m slow``): every row within the range the
    README states, 83-86% measured on two CPUs (an AMD EPYC and an Intel AVX-512)."""
    from helpers import run_cli

    result = run_cli("train", "--flagfile=quickstart_fashion_mnist", f"--model_dir={tmp_path / 'run'}",
                     timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    results = json.loads((tmp_path / "run" / "report.json").read_text())["results"]
    for part in ("net0", "net1", "S-avg", "ensemble", "fused"):
        assert 82.0 <= results[part]["top1"] <= 87.0, (part, results[part])
