"""Backbones: parameter counts from the literature, shapes, and the trunk/branch split."""

import numpy as np
import pytest

from keras_ffl.backbones import get_backbone
from keras_ffl.specs import parse_backbone


def trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize(
    "name,millions",
    [("resnet32", 0.47), ("wrn16_2", 0.70), ("resnet20", 0.28), ("resnet56", 0.86), ("resnet110", 1.74)],
)
def test_parameter_counts_match_literature_at_100_classes(name, millions):
    model = get_backbone(name).build_network((32, 32, 3), 100, "net")
    assert round(trainable_params(model) / 1e6, 2) == millions


@pytest.mark.parametrize(
    "name,shape,classes,expected",
    # torchvision's ResNet-18/34 (ImageNet stem) and the CIFAR adaptation (3x3 stem, no max-pool).
    [("resnet18", (32, 32, 3), 100, 11_220_132), ("resnet34", (32, 32, 3), 100, 21_328_292),
     ("resnet18", (224, 224, 3), 1000, 11_689_512)],
)
def test_four_stage_resnet_parameter_counts(name, shape, classes, expected):
    model = get_backbone(name).build_network(shape, classes, "net")
    assert trainable_params(model) == expected
    stem = model.get_layer("stem_conv").kernel.shape
    assert stem[:2] == ((7, 7) if shape[0] == 224 else (3, 3))
    # The trunk/branch boundary: after stage 3 on CIFAR, after stage 2 on ImageNet (the last two
    # stages are branches there, paper 000 Sec. IV).
    middle = (28, 28, 128) if shape[0] == 224 else (8, 8, 256)
    assert model.get_layer("middle").output.shape[1:] == middle
    assert model.outputs[1].shape[-1] == parse_backbone(name).feature_channels == 512


def test_wrn_28_10_parameter_count():
    model = get_backbone("wrn28_10").build_network((32, 32, 3), 100, "net")
    assert trainable_params(model) / 1e6 == pytest.approx(36.5, abs=0.1)


@pytest.mark.parametrize("name,channels", [("resnet8", 64), ("wrn10_2", 128), ("wrn16_1", 64)])
def test_outputs_logits_and_last_feature_map(name, channels):
    model = get_backbone(name).build_network((32, 32, 3), 7, "net")
    logits, features = model(np.zeros((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 7)
    assert features.shape == (2, 8, 8, channels)
    assert parse_backbone(name).feature_channels == channels


@pytest.mark.parametrize("name", ["resnet20", "wrn16_2"])
def test_trunk_plus_head_equals_whole_network(name):
    backbone = get_backbone(name)
    whole = backbone.build_network((32, 32, 3), 10, "net")
    trunk = backbone.build_trunk((32, 32, 3))
    head = backbone.build_head(tuple(trunk.output.shape[1:]), 10, "net0")
    assert trainable_params(trunk) + trainable_params(head) == trainable_params(whole)
    assert trunk.output.shape[1:] == (16, 16, 32 * (2 if name.startswith("wrn") else 1))


def test_conv_init_is_he_normal_fan_out():
    model = get_backbone("resnet56").build_network((32, 32, 3), 10, "net")
    kernel = model.get_layer("stage3_block0_conv2").kernel.numpy()  # 3x3x64x64
    expected_std = np.sqrt(2.0 / (3 * 3 * 64))
    assert kernel.std() == pytest.approx(expected_std, rel=0.05)
    bn = model.get_layer("stage3_block0_bn1")
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5


@pytest.mark.parametrize("bad", ["resnet33", "resnet", "wrn16", "wrn15_2", "vgg19", "wrn16_0", "densenet121"])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError, match="backbone"):
        get_backbone(bad)


@pytest.mark.parametrize(
    "name,parameters,features,trunk_shape,head,k3_total",
    # Counts from METHODS.md part 2 (hand-computed from the authors' layouts, 100 classes).
    [("densenet40_12", 188_092, (8, 8, 132), (8, 8, 60), 72_244, 332_580),
     ("vgg16", 14_774_436, (1, 1, 512), (2, 2, 512), 7_133_796, 29_042_028),
     ("vgg16_3fc", 15_299_748, (1, 1, 512), (2, 2, 512), 7_659_108, 30_617_964),
     ("shufflenetv2", 1_355_528, (4, 4, 1024), (8, 8, 232), 1_081_036, 3_517_600),
     ("mobilenetv2", 812_836, (2, 2, 1280), (4, 4, 48), 664_388, 2_141_612),
     ("mobilenetv2_w1", 2_353_060, (2, 2, 1280), (4, 4, 96), 1_809_444, 5_971_948)],
)
def test_comparison_backbones_parameters_maps_and_split(name, parameters, features, trunk_shape, head, k3_total):
    from keras_ffl import backbones

    whole = backbones.build_network(name, (32, 32, 3), 100)
    assert trainable_params(whole) == parameters
    logits, maps = whole(np.zeros((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 100) and maps.shape[1:] == features
    assert parse_backbone(name).feature_channels == features[-1]
    trunk, heads = backbones.build_branches(name, (32, 32, 3), 100, num_branches=3)
    assert trunk.output.shape[1:] == trunk_shape == whole.get_layer("middle").output.shape[1:]
    assert trainable_params(heads[0]) == head
    assert trainable_params(trunk) + trainable_params(heads[0]) == parameters  # trunk + head = the network
    assert trainable_params(trunk) + 3 * head == k3_total
    # Trunk then head computes what the whole network computes (same layers, same order).
    for layer in whole.layers:
        weights = layer.get_weights()
        if weights:
            owner = trunk if layer.name in {x.name for x in trunk.layers} else heads[0]
            owner.get_layer(layer.name).set_weights(weights)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(heads[0](trunk(x))[0], whole(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,split,trunk_shape", [("resnet32", "stage1", (32, 32, 16)),
                                                    ("densenet40_12", "trans1", (16, 16, 48)),
                                                    ("vgg16", "block3", (4, 4, 256))])
def test_the_earlier_split_mcl_okd_uses(name, split, trunk_shape):
    from keras_ffl import backbones

    trunk, heads = backbones.build_branches(name, (32, 32, 3), 100, num_branches=2, split=split)
    assert trunk.output.shape[1:] == trunk_shape
    whole = backbones.build_network(name, (32, 32, 3), 100)
    assert trainable_params(trunk) + trainable_params(heads[0]) == trainable_params(whole)
