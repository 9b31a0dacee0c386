"""ImageNet scale without ImageNet: the paper flagfiles run end to end on tfds mock data of
imagenet2012 (random JPEGs of random sizes through the real decode, random-resized-crop and
centre-crop pipeline), and the ResNet-34 shared-trunk split is the paper's."""

import os

import pytest
import tensorflow_datasets as tfds

from keras_ffl.backbones import get_backbone
from keras_ffl.train import parse_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--train_examples=4", "--test_examples=2", "--batch_size=2", "--eval_batch_size=2", "--epochs=1",
        "--steps_per_epoch=1", "--nodownload", "--validation_freq=0", "--verbose=0"]


def trainable(model):
    return sum(int(w.numpy().size) for w in model.trainable_weights)


def test_resnet34_imagenet_split_shares_stages_1_2_and_duplicates_3_4():
    backbone = get_backbone("resnet34")
    trunk = backbone.build_trunk((224, 224, 3))
    head = backbone.build_head(tuple(trunk.output.shape[1:]), 1000, "net0")
    assert trunk.output.shape[1:] == (28, 28, 128)
    assert head.layers[1].name.startswith("stage3_block0")
    assert trainable(trunk) + trainable(head) == 21_797_672  # torchvision's resnet34


@pytest.mark.parametrize(
    "flagfile,parts",
    [("ffl_res34_imagenet.flags", {"net0", "net1", "fused"}), ("afd_res18_res34_imagenet.flags", {"net0", "net1"})],
)
def test_paper_imagenet_flagfiles_train_on_mock_data(tmp_path, flagfile, parts):
    config = parse_config(["train", f"--flagfile={os.path.join(REPO, 'zoo', flagfile)}", *TINY,
                           f"--model_dir={tmp_path / 'run'}"])
    assert config.dataset == "imagenet2012" and config.batch_size == 2
    with tfds.testing.mock_data(num_examples=4):
        report = train(config)
    assert parts <= set(report["results"]) and "top5" in report["results"]["net0"]
    assert report["test_examples"] == 2
    if config.method == "ffl":
        assert config.options.fusion_channels == 1024 and config.rampup_epochs == 20  # N = C1 + C2, L = 20 on ImageNet
