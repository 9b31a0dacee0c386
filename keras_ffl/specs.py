"""Names the command line accepts, checked without importing TensorFlow.

Validation runs before any heavy import so that a bad flag costs a fraction of a second
and prints one line.  The builders in ``backbones/``, ``methods/`` and ``data/`` resolve
the same names.
"""

import dataclasses
import re

from keras_ffl.errors import suggestion

BACKBONE_FORMS = (
    "resnet<6n+2> (CIFAR ResNet: resnet8, resnet20, resnet32, resnet56, resnet110), "
    "resnet18 / resnet34 (4-stage BasicBlock ResNet), wrn<6n+4>_<k> (e.g. wrn16_2, wrn28_10), "
    "densenet40_12 (DenseNet-BC), vgg16 / vgg16_3fc / vgg16_3fc_dropout, shufflenetv2, "
    "mobilenetv2 (width 0.5) / mobilenetv2_w1"
)

#: Each backbone family once: its builder (``"module:Class"``, imported when a network is
#: built), and where it can be split for a shared trunk: its split points (ONE's split first,
#: the default) and the earlier one MCL-OKD and CL-ILR's hierarchy use.  The class gives where
#: each split point falls in its own segments (``split_points``).
FAMILIES = {
    "resnet": ("keras_ffl.backbones.cifar_resnet:CifarResNet", ("stage2", "stage1"), "stage1"),
    "wrn": ("keras_ffl.backbones.wrn:WideResNet", ("stage2", "stage1"), "stage1"),
    "resnet4": ("keras_ffl.backbones.resnet:ResNet", ("stage3", "stage2", "stage1"), "stage2"),
    "densenet": ("keras_ffl.backbones.densenet:DenseNetBC", ("trans2", "trans1"), "trans1"),
    "vgg": ("keras_ffl.backbones.vgg:VGG16", ("block4", "block3"), "block3"),
    "shufflenet": ("keras_ffl.backbones.shufflenet:ShuffleNetV2", ("layer2", "layer1"), "layer1"),
    "mobilenet": ("keras_ffl.backbones.mobilenet:MobileNetV2", ("group4", "group2"), "group2"),
}

#: Fixed-architecture backbones: name -> (family, channels of the last feature map, the
#: builder's arguments).  ``test_backbones`` holds each built network to its channels.
NAMED_BACKBONES = {
    "densenet40_12": ("densenet", 132, {}),
    "vgg16": ("vgg", 512, {"head": "linear"}),
    "vgg16_3fc": ("vgg", 512, {"head": "3fc"}),
    "vgg16_3fc_dropout": ("vgg", 512, {"head": "3fc", "dropout": 0.5}),
    "shufflenetv2": ("shufflenet", 1024, {}),
    "mobilenetv2": ("mobilenet", 1280, {"width": 0.5}),
    "mobilenetv2_w1": ("mobilenet", 1280, {"width": 1.0}),
}
ALIASES = {"densenet40-12": "densenet40_12", "densenet_bc40_12": "densenet40_12", "shufflenet_v2": "shufflenetv2",
           "shufflev2": "shufflenetv2", "mobilenet_v2": "mobilenetv2", "mobile_half": "mobilenetv2"}

#: Depths of the four-stage ResNet (He et al.): blocks per stage.
RESNET4_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    family: str  # a FAMILIES key: "resnet" (CIFAR, 3 stages), "resnet4" (ResNet-18/34), "wrn", ...
    depth: int = 0
    width: int = 1
    named: str = ""

    @property
    def name(self):
        if self.named:
            return self.named
        return f"wrn{self.depth}_{self.width}" if self.family == "wrn" else f"resnet{self.depth}"

    @property
    def builder_arguments(self):
        """Keyword arguments of its family's builder class."""
        if self.named:
            return dict(NAMED_BACKBONES[self.named][2])
        return {"depth": self.depth, **({"width": self.width} if self.family == "wrn" else {})}

    @property
    def feature_channels(self):
        """Channels of the last feature map (what the fusion module concatenates)."""
        if self.named:
            return NAMED_BACKBONES[self.named][1]
        return 512 if self.family == "resnet4" else 64 * self.width


def parse_backbone(name):
    """``"resnet32"`` -> BackboneSpec; raises ValueError naming the accepted forms."""
    text = name.strip().lower()
    text = ALIASES.get(text, text)
    if text in NAMED_BACKBONES:
        return BackboneSpec(NAMED_BACKBONES[text][0], named=text)
    match = re.fullmatch(r"resnet(\d+)", text)
    if match:
        depth = int(match[1])
        if depth in RESNET4_BLOCKS:
            return BackboneSpec("resnet4", depth)
        if depth >= 8 and (depth - 2) % 6 == 0:
            return BackboneSpec("resnet", depth)
        raise ValueError(f"backbone '{name}': CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110...), or 18 / 34")
    match = re.fullmatch(r"wrn(\d+)[_-](\d+)", text)
    if match:
        depth, width = int(match[1]), int(match[2])
        if depth >= 10 and (depth - 4) % 6 == 0 and width >= 1:
            return BackboneSpec("wrn", depth, width)
        raise ValueError(f"backbone '{name}': WRN depth must be 6n+4 (10, 16, 22, 28, 40...) and width >= 1")
    examples = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "wrn16_2",
                "wrn28_10", "wrn40_2", *NAMED_BACKBONES)
    raise ValueError(f"unknown backbone '{name}'{suggestion(text, examples)}: expected {BACKBONE_FORMS}")


def split_points(family, segments):
    """``{split name: segments before it}`` for a backbone class: the names (and their order,
    the default first) are the family's in FAMILIES, declared once; the class gives where each
    falls in its own segments."""
    names = FAMILIES[family][1]
    if len(names) != len(segments):
        raise ValueError(f"{family}: {len(segments)} split positions for the split points {names}")
    return dict(zip(names, segments))


def splits_help():
    """The ``--split`` choices of every family (for ``--help``)."""
    return ", ".join(f"{family}: {'/'.join(names)}" for family, (_, names, _) in FAMILIES.items())


def split_names(backbone):
    return FAMILIES[parse_backbone(backbone).family][1]


def early_split(backbone):
    return FAMILIES[parse_backbone(backbone).family][2]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    image_shape: tuple
    train_size: int
    test_size: int
    source: str  # "idx", "cifar" (python archive, else tfds), "tfds" (streamed) or "generated"
    default_data_dir: str = ""
    test_split: str = "test"  # the tfds split evaluated as "test"
    #: Examples are JPEG bytes decoded (and randomly cropped) per image by the pipeline.
    encoded_images: bool = False
    #: > 0: too large for memory; streamed, shuffled in windows of this many examples.
    shuffle_window: int = 0


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Your own data (folder, tfds:NAME): the side images are brought to unless --image_size says.
DEFAULT_IMAGE_SIZE = 32
#: From this image side on, the ImageNet augmentation recipe (random-resized crop) is the default.
LARGE_IMAGE_SIZE = 64

# (mean, std) per channel: the FFL code's for CIFAR, torchvision's for ImageNet, the training
# split's for Fashion-MNIST.  Your own data gets its training split's, kept in its config.
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

DATASETS = {
    "fashion_mnist": DatasetSpec(10, (28, 28, 1), 60000, 10000, "idx", FASHION_MNIST_DIR),
    "cifar10": DatasetSpec(10, (32, 32, 3), 50000, 10000, "cifar"),
    "cifar100": DatasetSpec(100, (32, 32, 3), 50000, 10000, "cifar"),
    "imagenet2012": DatasetSpec(1000, (224, 224, 3), 1281167, 50000, "tfds", test_split="validation",
                                encoded_images=True, shuffle_window=10000),
    "synthetic": DatasetSpec(10, (32, 32, 3), 0, 0, "generated"),
}

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: Class names where the dataset has standard ones (exports write them into metadata.json).
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
