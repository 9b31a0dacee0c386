"""Independent PyTorch references of the networks as the authors' code writes them.

* CIFAR ResNet: the FFL and ONE code (post-activation BasicBlock, 1x1-conv + BN projection,
  ``padding=1`` on every 3x3 convolution, stride 2 included);
* WRN: RepDistiller's ``wrn`` (pre-activation blocks; the projection takes the pre-activated
  input);
* ResNet-18/34: torchvision's layout, with the CIFAR stem (3x3, no max-pool) or the ImageNet
  stem (7x7 stride 2 padded 3, 3x3 stride-2 max-pool padded 1);
* DenseNet-BC 40-12: OKDDip's and MCL-OKD's ``densenetd40k12``;
* VGG-16 with BN (32x32): OKDDip's and MCL-OKD's layout (biased convs, five max-pools);
* ShuffleNetV2 1.0x and MobileNetV2 (width 0.5): RepDistiller's CIFAR variants;
* FFL: two branches on a shared ResNet trunk and the fusion module of the FFL code
  (concatenation, depthwise 3x3, BN, ReLU, 1x1, BN, ReLU, pool, linear), with its loss.

Modules are keyed by the names keras_ffl gives the same layers, which is all ``port`` uses to
copy weights across; nothing here imports keras_ffl.  The parity tests check keras_ffl's
networks against these, and ``bench --compare=torch`` times a training step of them
(``TrainStep``) beside keras_ffl's; only those import PyTorch.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin, cout, stride):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Layers(nn.Module):
    """Named modules; ``forward`` of the networks below says how they connect."""

    def __init__(self):
        super().__init__()
        self.named = nn.ModuleDict()

    def add(self, name, module):
        self.named[name] = module
        return module

    def __getitem__(self, name):
        return self.named[name]


class CifarResNet(Layers):
    """ResNet-(6n+2) of the FFL/ONE code; ``part`` = "whole", "trunk" (stem + stages 1-2) or "head"."""

    def __init__(self, depth, num_classes, part="whole"):
        super().__init__()
        self.blocks, self.part = (depth - 2) // 6, part
        channels = 16
        if part in ("whole", "trunk"):
            self.add("stem_conv", conv3x3(3, 16, 1))
            self.add("stem_bn", nn.BatchNorm2d(16))
        stages = {"whole": (1, 2, 3), "trunk": (1, 2), "head": (3,)}[part]
        if part == "head":
            channels = 32
        for stage in stages:
            width, stride = 16 * 2 ** (stage - 1), 1 if stage == 1 else 2
            for b in range(self.blocks):
                p = f"stage{stage}_block{b}"
                self.add(f"{p}_conv1", conv3x3(channels, width, stride if b == 0 else 1))
                self.add(f"{p}_bn1", nn.BatchNorm2d(width))
                self.add(f"{p}_conv2", conv3x3(width, width, 1))
                self.add(f"{p}_bn2", nn.BatchNorm2d(width))
                if b == 0 and (stride != 1 or channels != width):
                    self.add(f"{p}_proj_conv", nn.Conv2d(channels, width, 1, stride=stride, bias=False))
                    self.add(f"{p}_proj_bn", nn.BatchNorm2d(width))
                channels = width
        self.stages = stages
        if part in ("whole", "head"):
            self.add("classifier", nn.Linear(64, num_classes))

    def block(self, x, p):
        y = F.relu(self[f"{p}_bn1"](self[f"{p}_conv1"](x)))
        y = self[f"{p}_bn2"](self[f"{p}_conv2"](y))
        shortcut = self[f"{p}_proj_bn"](self[f"{p}_proj_conv"](x)) if f"{p}_proj_conv" in self.named else x
        return F.relu(y + shortcut)

    def forward(self, x):
        if self.part != "head":
            x = F.relu(self["stem_bn"](self["stem_conv"](x)))
        for stage in self.stages:
            for b in range(self.blocks):
                x = self.block(x, f"stage{stage}_block{b}")
        if self.part == "trunk":
            return x
        return self["classifier"](x.mean(dim=(2, 3))), x


class WideResNet(Layers):
    """RepDistiller's WRN-d-k."""

    def __init__(self, depth, width, num_classes):
        super().__init__()
        self.blocks = (depth - 4) // 6
        self.add("stem_conv", conv3x3(3, 16, 1))
        channels = 16
        for stage in (1, 2, 3):
            out, stride = 16 * width * 2 ** (stage - 1), 1 if stage == 1 else 2
            for b in range(self.blocks):
                p = f"stage{stage}_block{b}"
                self.add(f"{p}_bn1", nn.BatchNorm2d(channels))
                self.add(f"{p}_conv1", conv3x3(channels, out, stride if b == 0 else 1))
                self.add(f"{p}_bn2", nn.BatchNorm2d(out))
                self.add(f"{p}_conv2", conv3x3(out, out, 1))
                if channels != out:
                    self.add(f"{p}_proj_conv", nn.Conv2d(channels, out, 1, stride=stride if b == 0 else 1,
                                                         bias=False))
                channels = out
        self.add("final_bn", nn.BatchNorm2d(channels))
        self.add("classifier", nn.Linear(channels, num_classes))

    def forward(self, x):
        x = self["stem_conv"](x)
        for stage in (1, 2, 3):
            for b in range(self.blocks):
                p = f"stage{stage}_block{b}"
                pre = F.relu(self[f"{p}_bn1"](x))
                y = self[f"{p}_conv1"](pre)
                y = self[f"{p}_conv2"](F.relu(self[f"{p}_bn2"](y)))
                x = y + (self[f"{p}_proj_conv"](pre) if f"{p}_proj_conv" in self.named else x)
        features = F.relu(self["final_bn"](x))
        return self["classifier"](features.mean(dim=(2, 3))), features


class ResNet(Layers):
    """torchvision's ResNet-18/34 (BasicBlock), CIFAR or ImageNet stem."""

    BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth, num_classes, imagenet_stem):
        super().__init__()
        self.imagenet, self.layout = imagenet_stem, self.BLOCKS[depth]
        self.add("stem_conv", nn.Conv2d(3, 64, 7, 2, 3, bias=False) if imagenet_stem else conv3x3(3, 64, 1))
        self.add("stem_bn", nn.BatchNorm2d(64))
        channels = 64
        for stage, blocks in enumerate(self.layout, start=1):
            width = 64 * 2 ** (stage - 1)
            for b in range(blocks):
                stride = 2 if b == 0 and stage > 1 else 1
                p = f"stage{stage}_block{b}"
                self.add(f"{p}_conv1", conv3x3(channels, width, stride))
                self.add(f"{p}_bn1", nn.BatchNorm2d(width))
                self.add(f"{p}_conv2", conv3x3(width, width, 1))
                self.add(f"{p}_bn2", nn.BatchNorm2d(width))
                if stride != 1 or channels != width:
                    self.add(f"{p}_proj_conv", nn.Conv2d(channels, width, 1, stride=stride, bias=False))
                    self.add(f"{p}_proj_bn", nn.BatchNorm2d(width))
                channels = width
        self.add("classifier", nn.Linear(512, num_classes))

    def forward(self, x):
        x = F.relu(self["stem_bn"](self["stem_conv"](x)))
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        for stage, blocks in enumerate(self.layout, start=1):
            for b in range(blocks):
                x = CifarResNet.block(self, x, f"stage{stage}_block{b}")
        return self["classifier"](x.mean(dim=(2, 3))), x


class DenseNetBC(Layers):
    def __init__(self, num_classes, growth=12, layers_per_block=6):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.add("conv0", nn.Conv2d(3, 2 * growth, 3, padding=1, bias=False))
        channels = 2 * growth
        for block in (1, 2, 3):
            for layer in range(layers_per_block):
                p = f"block{block}_layer{layer}"
                self.add(f"{p}_bn1", nn.BatchNorm2d(channels))
                self.add(f"{p}_conv1", nn.Conv2d(channels, 4 * growth, 1, bias=False))
                self.add(f"{p}_bn2", nn.BatchNorm2d(4 * growth))
                self.add(f"{p}_conv2", nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))
                channels += growth
            if block < 3:
                self.add(f"trans{block}_bn", nn.BatchNorm2d(channels))
                self.add(f"trans{block}_conv", nn.Conv2d(channels, channels // 2, 1, bias=False))
                channels //= 2
        self.add("final_bn", nn.BatchNorm2d(channels))
        self.add("classifier", nn.Linear(channels, num_classes))

    def forward(self, x):
        x = self["conv0"](x)
        for block in (1, 2, 3):
            for layer in range(self.layers_per_block):
                p = f"block{block}_layer{layer}"
                y = self[f"{p}_conv1"](F.relu(self[f"{p}_bn1"](x)))
                y = self[f"{p}_conv2"](F.relu(self[f"{p}_bn2"](y)))
                x = torch.cat([x, y], dim=1)
            if block < 3:
                x = F.avg_pool2d(self[f"trans{block}_conv"](F.relu(self[f"trans{block}_bn"](x))), 2)
        features = F.relu(self["final_bn"](x))
        return self["classifier"](features.mean(dim=(2, 3))), features


class VGG16(Layers):
    BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

    def __init__(self, num_classes):
        super().__init__()
        channels = 3
        for block, widths in enumerate(self.BLOCKS, start=1):
            for j, width in enumerate(widths):
                self.add(f"block{block}_conv{j}", nn.Conv2d(channels, width, 3, padding=1, bias=True))
                self.add(f"block{block}_bn{j}", nn.BatchNorm2d(width))
                channels = width
        self.add("classifier", nn.Linear(512, num_classes))

    def forward(self, x):
        for block, widths in enumerate(self.BLOCKS, start=1):
            for j in range(len(widths)):
                x = F.relu(self[f"block{block}_bn{j}"](self[f"block{block}_conv{j}"](x)))
            x = F.max_pool2d(x, 2)
        return self["classifier"](x.flatten(1)), x


def shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNetV2(Layers):
    STAGES = ((116, 3), (232, 7), (464, 3))

    def __init__(self, num_classes):
        super().__init__()

        def conv_bn(name, cin, cout, depthwise=False, stride=1):
            self.add(name, nn.Conv2d(cin, cout, 3 if depthwise else 1, stride, 1 if depthwise else 0,
                                     groups=cin if depthwise else 1, bias=False))
            self.add(f"{name}_bn", nn.BatchNorm2d(cout))

        conv_bn("conv1", 3, 24)
        channels = 24
        for index, (width, blocks) in enumerate(self.STAGES, start=1):
            p, mid = f"layer{index}_down", width // 2
            conv_bn(f"{p}_conv1", channels, channels, depthwise=True, stride=2)
            conv_bn(f"{p}_conv2", channels, mid)
            conv_bn(f"{p}_conv3", channels, mid)
            conv_bn(f"{p}_conv4", mid, mid, depthwise=True, stride=2)
            conv_bn(f"{p}_conv5", mid, mid)
            for b in range(blocks):
                p = f"layer{index}_block{b}"
                conv_bn(f"{p}_conv1", mid, mid)
                conv_bn(f"{p}_conv2", mid, mid, depthwise=True)
                conv_bn(f"{p}_conv3", mid, mid)
            channels = width
        conv_bn("conv2", channels, 1024)
        self.add("classifier", nn.Linear(1024, num_classes))

    def cbr(self, x, name, relu=True):
        x = self[f"{name}_bn"](self[name](x))
        return F.relu(x) if relu else x

    def forward(self, x):
        x = self.cbr(x, "conv1")
        for index, (_, blocks) in enumerate(self.STAGES, start=1):
            p = f"layer{index}_down"
            left = self.cbr(self.cbr(x, f"{p}_conv1", relu=False), f"{p}_conv2")
            right = self.cbr(self.cbr(self.cbr(x, f"{p}_conv3"), f"{p}_conv4", relu=False), f"{p}_conv5")
            x = shuffle(torch.cat([left, right], dim=1))
            for b in range(blocks):
                p = f"layer{index}_block{b}"
                x1, x2 = x.chunk(2, dim=1)
                y = self.cbr(self.cbr(self.cbr(x2, f"{p}_conv1"), f"{p}_conv2", relu=False), f"{p}_conv3")
                x = shuffle(torch.cat([x1, y], dim=1))
        features = self.cbr(x, "conv2")
        return self["classifier"](F.avg_pool2d(features, 4).flatten(1)), features


class MobileNetV2(Layers):
    GROUPS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, num_classes, width=0.5):
        super().__init__()
        self.blocks = []
        channels = int(32 * width)
        self.add("conv1", nn.Conv2d(3, channels, 3, 2, 1, bias=False))
        self.add("conv1_bn", nn.BatchNorm2d(channels))
        for g, (t, c, n, s) in enumerate(self.GROUPS):
            out = int(c * width)
            for b in range(n):
                p, stride, hidden = f"group{g}_block{b}", s if b == 0 else 1, channels * t
                self.add(f"{p}_expand", nn.Conv2d(channels, hidden, 1, bias=False))
                self.add(f"{p}_expand_bn", nn.BatchNorm2d(hidden))
                self.add(f"{p}_depthwise", nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False))
                self.add(f"{p}_depthwise_bn", nn.BatchNorm2d(hidden))
                self.add(f"{p}_project", nn.Conv2d(hidden, out, 1, bias=False))
                self.add(f"{p}_project_bn", nn.BatchNorm2d(out))
                self.blocks.append((p, stride == 1 and channels == out))
                channels = out
        self.add("conv2", nn.Conv2d(channels, 1280, 1, bias=False))
        self.add("conv2_bn", nn.BatchNorm2d(1280))
        self.add("classifier", nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.relu(self["conv1_bn"](self["conv1"](x)))
        for p, residual in self.blocks:
            y = F.relu(self[f"{p}_expand_bn"](self[f"{p}_expand"](x)))
            y = F.relu(self[f"{p}_depthwise_bn"](self[f"{p}_depthwise"](y)))
            y = self[f"{p}_project_bn"](self[f"{p}_project"](y))
            x = x + y if residual else y
        features = F.relu(self["conv2_bn"](self["conv2"](x)))
        pooled = F.avg_pool2d(features, features.shape[-1], ceil_mode=True).flatten(1)
        return self["classifier"](pooled), features


class FusionModule(Layers):
    def __init__(self, channels, fused_channels, num_classes):
        super().__init__()
        self.add("depthwise", nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False))
        self.add("depthwise_bn", nn.BatchNorm2d(channels))
        self.add("pointwise", nn.Conv2d(channels, fused_channels, 1, bias=False))
        self.add("pointwise_bn", nn.BatchNorm2d(fused_channels))
        self.add("classifier", nn.Linear(fused_channels, num_classes))

    def forward(self, maps):
        x = F.relu(self["depthwise_bn"](self["depthwise"](torch.cat(maps, dim=1))))
        x = F.relu(self["pointwise_bn"](self["pointwise"](x)))
        return self["classifier"](x.mean(dim=(2, 3)))


class FFL(nn.Module):
    """Two (or more) branches of a CIFAR ResNet on a shared trunk, and the fusion module."""

    def __init__(self, depth, num_classes, branches=2):
        super().__init__()
        self.trunk = CifarResNet(depth, num_classes, "trunk")
        self.heads = nn.ModuleList([CifarResNet(depth, num_classes, "head") for _ in range(branches)])
        self.fusion = FusionModule(64 * branches, 64, num_classes)

    def forward(self, x):
        shared = self.trunk(x)
        logits, maps = zip(*[head(shared) for head in self.heads])
        return list(logits), self.fusion(list(maps))


class IndependentFFL(nn.Module):
    """FFL over independent CIFAR ResNets (case 2): the fusion module over their last maps."""

    def __init__(self, depth, num_classes, branches=2):
        super().__init__()
        self.networks = Branches(depth, num_classes, branches, shared=False)
        self.fusion = FusionModule(64 * branches, 64, num_classes)

    def forward(self, x):
        logits, maps = self.networks(x)
        return logits, self.fusion(maps)


class Branches(nn.Module):
    """K CIFAR ResNets: independent, or K heads on one shared trunk (FFL's and ONE's case 1);
    ``forward`` gives ``(logits, last feature maps)`` of each."""

    def __init__(self, depth, num_classes, branches, shared):
        super().__init__()
        self.trunk = CifarResNet(depth, num_classes, "trunk") if shared else None
        part = "head" if shared else "whole"
        self.heads = nn.ModuleList([CifarResNet(depth, num_classes, part) for _ in range(branches)])

    def forward(self, x):
        x = self.trunk(x) if self.trunk is not None else x
        logits, maps = zip(*[head(x) for head in self.heads])
        return list(logits), list(maps)


def dml_loss(logits, labels, t):
    """DML's synchronous update: each network's CE plus its mean KL to every peer (detached)."""
    count = len(logits)
    loss = sum(F.cross_entropy(z, labels) for z in logits)
    for k, z in enumerate(logits):
        loss = loss + sum(kl(z, logits[j], t) for j in range(count) if j != k) / (count - 1)
    return loss


class TrainStep:
    """One PyTorch training step (forward, loss, backward, SGD update) of ``model`` on one
    resident batch, channels_last, in bfloat16 autocast if asked: what the PyTorch code of a
    paper runs per step, for ``bench --compare=torch``.  On the GPU when PyTorch sees one (the
    optimiser's state is created lazily, so moving the model first keeps it there)."""

    def __init__(self, model, loss, optimizer, images_nhwc, labels, bfloat16=False):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self.loss, self.optimizer, self.bfloat16 = loss, optimizer, bfloat16
        self.images = nchw(images_nhwc).float().to(self.device).contiguous(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(np.asarray(labels)).long().to(self.device)

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bfloat16):
            loss = self.loss(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        return loss

    def images_per_sec(self, steps):
        import time

        start = time.perf_counter()
        for _ in range(steps):
            loss = self()
        float(loss)
        return steps * len(self.labels) / (time.perf_counter() - start)


def sgd_all(model, lr, weight_decay, momentum=0.9, nesterov=True):
    """Every parameter at one coupled weight decay (DML's and the baseline's optimiser)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def kl(student, teacher, t):
    """The FFL/ONE code's KL: teacher softmax + 1e-7, detached, T^2."""
    target = (F.softmax(teacher / t, dim=1) + 1e-7).detach()
    return t * t * torch.mean(torch.sum(target * (torch.log(target) - F.log_softmax(student / t, dim=1)), dim=1))


def ffl_loss(logits, fused, labels, t, weight):
    ensemble = torch.stack(logits).mean(0)
    ce = sum(F.cross_entropy(z, labels) for z in logits) + F.cross_entropy(fused, labels)
    return ce + weight * (kl(fused, ensemble, t) + sum(kl(z, fused, t) for z in logits))


def rampup(epoch, length):
    return math.exp(-5.0 * (1.0 - min(max(epoch, 0), length) / length) ** 2)


def sgd(model, lr, weight_decay, fusion_weight_decay):
    """The FFL code's optimiser: Nesterov SGD, coupled weight decay, its own for the fusion module."""
    fusion = set(map(id, model.fusion.parameters()))
    groups = [{"params": [p for p in model.parameters() if id(p) not in fusion], "weight_decay": weight_decay},
              {"params": list(model.fusion.parameters()), "weight_decay": fusion_weight_decay}]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


# ------------------------------------------------------------------------ porting
def port(keras_layer_weights, module):
    """Copies ``{layer name: [numpy arrays, in Keras order]}`` into the module's named layers."""
    for name, target in module.named.items():
        values = keras_layer_weights[name]
        with torch.no_grad():
            if isinstance(target, nn.Conv2d):
                kernel = values[0]
                if target.groups > 1:  # Keras depthwise (3, 3, C, 1) -> (C, 1, 3, 3)
                    target.weight.copy_(torch.from_numpy(kernel.transpose(2, 3, 0, 1).copy()))
                else:  # HWIO -> OIHW
                    target.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
                if target.bias is not None:
                    target.bias.copy_(torch.from_numpy(values[1]))
            elif isinstance(target, nn.BatchNorm2d):
                gamma, beta, mean, variance = values
                target.weight.copy_(torch.from_numpy(gamma))
                target.bias.copy_(torch.from_numpy(beta))
                target.running_mean.copy_(torch.from_numpy(mean))
                target.running_var.copy_(torch.from_numpy(variance))
            elif isinstance(target, nn.Linear):
                target.weight.copy_(torch.from_numpy(values[0].T.copy()))
                target.bias.copy_(torch.from_numpy(values[1]))


def nchw(images):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))
