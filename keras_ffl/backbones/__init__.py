"""Backbones by name: ``resnet{6n+2}`` (CIFAR ResNet), ``resnet18``/``resnet34`` (four-stage
ResNet) and ``wrn{6n+4}_{k}`` (Wide ResNet)."""

from keras_ffl.backbones.base import Backbone
from keras_ffl.backbones.base import MIDDLE_LAYER
from keras_ffl.backbones.cifar_resnet import CifarResNet
from keras_ffl.backbones.resnet import ResNet
from keras_ffl.backbones.wrn import WideResNet
from keras_ffl.specs import parse_backbone


def get_backbone(name, sync_bn=False):
    """Returns the backbone called ``name``; raises ValueError naming the accepted forms."""
    spec = parse_backbone(name)
    if spec.family == "resnet":
        return CifarResNet(spec.depth, sync_bn=sync_bn)
    if spec.family == "resnet4":
        return ResNet(spec.depth, sync_bn=sync_bn)
    return WideResNet(spec.depth, spec.width, sync_bn=sync_bn)


__all__ = ["Backbone", "CifarResNet", "ResNet", "WideResNet", "MIDDLE_LAYER", "get_backbone"]
