"""Backbones by name: ``resnet{6n+2}`` (CIFAR ResNet), ``resnet18``/``resnet34`` (four-stage
ResNet), ``wrn{6n+4}_{k}`` (Wide ResNet), ``densenet40_12`` (DenseNet-BC), ``vgg16`` and
``vgg16_3fc``, ``shufflenetv2`` and ``mobilenetv2`` (RepDistiller's CIFAR variants).

A backbone knows nothing of distillation.  For a method it gives either whole networks
(independent sub-networks) or a shared trunk and duplicable heads::

    from keras_ffl import backbones

    nets = [backbones.build_network("resnet32", (32, 32, 3), 100, name=f"net{k}") for k in range(2)]
    trunk, heads = backbones.build_branches("resnet32", (32, 32, 3), 100, num_branches=3)

Every network is a functional ``keras.Model`` from images to ``[logits, last feature map]``.
"""

import importlib

from keras_ffl.backbones.base import Backbone
from keras_ffl.backbones.base import MIDDLE_LAYER
from keras_ffl.backbones.cifar_resnet import CifarResNet
from keras_ffl.backbones.densenet import DenseNetBC
from keras_ffl.backbones.mobilenet import MobileNetV2
from keras_ffl.backbones.resnet import ResNet
from keras_ffl.backbones.shufflenet import ShuffleNetV2
from keras_ffl.backbones.vgg import VGG16
from keras_ffl.backbones.wrn import WideResNet
from keras_ffl.specs import FAMILIES, parse_backbone


def get_backbone(name, sync_bn=False):
    """Returns the backbone called ``name`` (its family's class, ``specs.FAMILIES``, with the
    name's arguments); raises ValueError naming the accepted forms."""
    spec = parse_backbone(name)
    module, _, attribute = FAMILIES[spec.family][0].partition(":")
    return getattr(importlib.import_module(module), attribute)(**spec.builder_arguments, sync_bn=sync_bn)


def build_network(backbone, input_shape, num_classes, name=None, sync_bn=False):
    """A whole network called ``name`` (default: the backbone's name): images -> [logits, feature map]."""
    spec = get_backbone(backbone, sync_bn=sync_bn)
    return spec.build_network(tuple(input_shape), num_classes, name=name or spec.name)


def build_branches(backbone, input_shape, num_classes, num_branches=2, split=None, sync_bn=False):
    """``(trunk, [head_0, ...])``: the shared lower stages and one copy of the upper stages and
    classifier per branch (named ``net0``, ``net1``...).  ``split`` names where: by default
    ONE's split (the last stage per branch), as FFL and ONE do; see each backbone's
    ``split_points``."""
    spec = get_backbone(backbone, sync_bn=sync_bn)
    input_shape = tuple(input_shape)
    trunk = spec.build_trunk(input_shape, name="trunk", split=split)
    shape = tuple(trunk.output.shape[1:])
    return trunk, [spec.build_head(shape, num_classes, name=f"net{k}", split=split, input_shape=input_shape)
                   for k in range(num_branches)]


__all__ = ["Backbone", "CifarResNet", "DenseNetBC", "MobileNetV2", "ResNet", "ShuffleNetV2", "VGG16", "WideResNet",
           "MIDDLE_LAYER", "build_branches", "build_network", "get_backbone"]
