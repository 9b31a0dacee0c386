"""Every weight starts as the authors' code draws it (issue 25; BUILD.md, "Initial weights").

The expected rules below are written from the reference code, in PyTorch's terms: a Keras
kernel is read as the PyTorch weight ``(out, in / groups, kh, kw)`` it stands for (a
depthwise kernel ``(kh, kw, C, m)`` is ``groups = C``, ``out = C * m``), and each rule is the
formula of the code that draws it, not taken from ``keras_ffl.initializers``.

Each drawn weight is divided by its rule's scale (the normal's std, the uniform's bound) and
compared with the unit distribution: N(0, 1) or U(-1, 1), std ``1/sqrt(3)``.  For n i.i.d.
draws with std s and kurtosis k (3 normal, 1.8 uniform) the sample mean has std s / sqrt(n)
and the sample std, by the delta method on Var(s^2) = s^4 (k - 1) / n, has std
s sqrt((k - 1) / (4 n)): s / sqrt(2n) for the normal, s sqrt(0.2 / n) for the uniform.  Both
must lie within Z = 6 of those (a false alarm about once in 10^9 comparisons); each weight of
at least MIN_SAMPLES values is compared alone, and all weights of one layer type of one
network are compared pooled, so small layers count too.  A uniform draw must also stay within
its bound, a constant must be exact, and no random draw may be constant or repeat another
weight.  ``test_a_wrong_fan_rule_fails_the_same_comparison`` shows the comparison bites.
"""

import math
import re
from collections import defaultdict

import keras
import numpy as np
import pytest

from keras_ffl import backbones, methods, specs

Z = 6.0
MIN_SAMPLES = 50
KURTOSIS = {"normal": 3.0, "uniform": 1.8}
UNIT_STD = {"normal": 1.0, "uniform": 1.0 / math.sqrt(3.0)}


# --- The authors' rules, on PyTorch's view of a weight ------------------------------------------

def torch_dims(layer):
    """``(out, in_per_group, kh * kw)`` of the PyTorch module a Keras layer stands for."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, channels, multiplier = layer.kernel.shape
        return channels * multiplier, 1, kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        return cout, cin, kh * kw
    cin, cout = layer.kernel.shape
    return cout, cin, 1


def he_fan_out(out, in_g, k):
    """``w.normal_(0, sqrt(2 / n)), n = kh * kw * out_channels`` (FFL, ONE, RepDistiller) and
    ``kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`` (torchvision, OKDDip, MCL-OKD, PCL)."""
    return "normal", math.sqrt(2.0 / (k * out))


def he_fan_in(out, in_g, k):
    """``nn.init.kaiming_normal_(w)``: fan_in, ReLU gain (the DenseNet-BC code)."""
    return "normal", math.sqrt(2.0 / (k * in_g))


def torch_default(out, in_g, k):
    """PyTorch's own ``reset_parameters`` (>= 1.0), weight and bias alike: ``kaiming_uniform_
    (a=sqrt(5))`` = U(+-1/sqrt(fan_in)), fan_in = in_channels / groups * kh * kw."""
    return "uniform", 1.0 / math.sqrt(k * in_g)


def normal_001(out, in_g, k):
    """``nn.init.normal_(w, 0, 0.01)`` (the VGG and MobileNetV2 code's linear layers)."""
    return "normal", 0.01


def zero(*dims):
    return "const", 0.0


def one(*dims):
    return "const", 1.0


BATCH_NORM = {"gamma": one, "beta": zero, "moving_mean": zero, "moving_variance": one}


def rules(conv, linear, linear_bias, depthwise=None, conv_bias=zero):
    """What one reference draws, by (layer kind, weight name)."""
    table = {("conv", "kernel"): conv, ("conv", "bias"): conv_bias, ("linear", "kernel"): linear,
             ("linear", "bias"): linear_bias, **{("bn", name): rule for name, rule in BATCH_NORM.items()}}
    if depthwise:
        table[("depthwise", "kernel")] = depthwise
    return table


#: Each backbone (at its smallest depth where the family has one) and its reference code.
BACKBONES = {
    # FFL our_network.py / ONE models/cifar/resnet.py: convs N(0, sqrt(2/n)), nn.Linear default.
    "resnet8": rules(he_fan_out, torch_default, torch_default),
    # torchvision resnet.py (the ImageNet ResNet FFL and ONE compare on): kaiming_normal_ fan_out.
    "resnet18": rules(he_fan_out, torch_default, torch_default),
    "resnet34": rules(he_fan_out, torch_default, torch_default),
    # RepDistiller models/wrn.py: convs N(0, sqrt(2/n)), Linear bias zeroed.
    "wrn10_2": rules(he_fan_out, torch_default, zero),
    # MCL-OKD models/densenet.py (= PCL's densenet.py): kaiming_normal_ (fan_in), Linear bias 0.
    "densenet40_12": rules(he_fan_in, torch_default, zero),
    # MCL-OKD models/vgg.py, PCL src/models/vgg.py: convs fan_out, conv bias 0, Linear N(0, .01), 0.
    "vgg16": rules(he_fan_out, normal_001, zero),
    "vgg16_3fc": rules(he_fan_out, normal_001, zero),
    # OKDDip models/model_cifar/vgg_GL.py: the same, but its loop leaves the Linear bias default.
    "vgg16_3fc_dropout": rules(he_fan_out, normal_001, torch_default),
    # RepDistiller models/ShuffleNetv2.py: no init loop, PyTorch's defaults (depthwise fan_in 9).
    "shufflenetv2": rules(torch_default, torch_default, torch_default, depthwise=torch_default),
    # RepDistiller models/mobilenetv2.py _initialize_weights: n = kh*kw*out_channels for every
    # nn.Conv2d, the depthwise one too; Linear N(0, 0.01), bias 0.
    "mobilenetv2": rules(he_fan_out, normal_001, zero, depthwise=he_fan_out),
    "mobilenetv2_w1": rules(he_fan_out, normal_001, zero, depthwise=he_fan_out),
}
#: Input sizes: ResNet-18/34 also get their ImageNet stem (7x7 conv) at 64 px.
SHAPES = {"resnet18": [(32, 32, 3), (64, 64, 3)], "resnet34": [(64, 64, 3)]}


def test_the_table_covers_every_backbone():
    families = {specs.parse_backbone(name).family for name in BACKBONES}
    assert set(specs.NAMED_BACKBONES) <= set(BACKBONES) and {"resnet", "resnet4", "wrn"} <= families


#: Method-owned layers, by the path under the method model: which rules draw them.
#: ``"network"`` entries are modules of the multi-branch network in the authors' code, whose
#: init loop covers them: they follow the backbone's linear rule (ONE resnet.py: nn.Linear's
#: default; MCL-OKD one_vgg.py, OKDDip vgg_GL.py, PCL vgg.py: N(0, 0.01)).
METHOD_LAYERS = [
    # FFL our_network.py Fusion_module: its own loop, every nn.Conv2d (the depthwise one,
    # groups = channels, out = channels) N(0, sqrt(2 / (kh*kw*out))); fc2 nn.Linear's default.
    # FFCL (no code) uses the same module; the spatial adapter (the paper only describes it)
    # is a conv of that module.
    (r"fusion/", rules(he_fan_out, torch_default, torch_default, depthwise=he_fan_out)),
    # ONE models/cifar/resnet.py: control_v1 nn.Linear + bn_v1 nn.BatchNorm1d.
    (r"gate/", "network"),
    # AFD (no public code; library choice, BUILD.md): convs as the backbones' code, bias 0.
    (r"discriminator\d+/", rules(he_fan_out, None, None)),
    (r"transfer\d+/", rules(he_fan_out, None, None)),
    # OKDDip resnet_GL.py query_weight / key_weight.
    (r"attention/", "network"),
    # MCL-OKD mcl/criterion.py Embed: nn.Linear in the criterion, outside the net's init loop.
    (r"embed\d+/", rules(None, torch_default, torch_default)),
    # PCL (unofficial) src/models/resnet.py en_fc.
    (r"ensemble_classifier/", "network"),
]


def method_bookkeeping(name, value, model):
    """Variables outside layers: their reference values (or None: not a method's)."""
    if name in ("epoch", "ema_steps"):
        return zero()
    if name.startswith("memory"):  # MCL-OKD mcl/memory.py: torch.rand * 2 stdv - stdv, stdv = 1/sqrt(dim/3)
        return "uniform", 1.0 / math.sqrt(value.shape[-1] / 3.0)
    if name == "general_weights":  # KDCL's General teacher starts as the plain mean
        return "const", 1.0 / len(model.branches)
    return None


# --- The comparison ----------------------------------------------------------------------------

def problems(values, rule, what):
    """What is wrong with ``values`` drawn by ``rule``: a list of one-line messages."""
    kind, scale = rule
    values = np.asarray(values, "float64").ravel()
    if kind == "const":
        return [] if np.all(values == scale) else [f"{what}: expected the constant {scale:g}, got mean "
                                                    f"{values.mean():.4g} std {values.std():.4g}"]
    x = values / scale
    found = []
    if values.size > 1 and np.all(values == values[0]):
        found.append(f"{what}: constant {values[0]:.4g} where {kind} draws are expected")
    if kind == "uniform" and np.abs(x).max() > 1.0 + 1e-6:
        found.append(f"{what}: |w| reaches {np.abs(values).max():.4g}, beyond the bound {scale:.4g}")
    n = x.size
    if n >= MIN_SAMPLES:
        sigma = UNIT_STD[kind]
        mean_tol = Z * sigma / math.sqrt(n)
        std_tol = Z * sigma * math.sqrt((KURTOSIS[kind] - 1.0) / (4.0 * n))
        expected_std = sigma * scale
        if abs(x.mean()) > mean_tol:
            found.append(f"{what}: mean {values.mean():.4g}, expected 0 +- {mean_tol * scale:.2g} (n={n})")
        if abs(x.std() - sigma) > std_tol:
            found.append(f"{what}: std {values.std():.4g}, expected {expected_std:.4g} +- {std_tol * scale:.2g} "
                         f"({kind}, n={n})")
    return found


class Comparison:
    """Compares weights one by one, pools them by (network, layer kind, weight) and keeps every
    random draw to check that none repeats another."""

    def __init__(self):
        self.found, self.pools, self.draws = [], defaultdict(list), {}

    def add(self, values, rule, what, pool):
        values = np.asarray(values)
        self.found += problems(values, rule, what)
        kind, scale = rule
        if kind != "const":
            self.pools[(pool, rule[0])].append(values.ravel() / scale)
            key = (values.shape, values.tobytes())
            if key in self.draws:
                self.found.append(f"{what}: the same draw as {self.draws[key]}")
            self.draws.setdefault(key, what)

    def layer(self, layer, table, label, path=None):
        kind = layer_kind(layer)
        for variable in layer.weights:
            what = f"{label}: {path or layer.name}/{variable.name} {tuple(variable.shape)}"
            rule = table.get((kind, variable.name)) if kind else None
            if rule is None:
                self.found.append(f"{what}: no reference rule for a {type(layer).__name__} weight")
                continue
            dims = torch_dims(layer) if kind != "bn" else ()
            self.add(variable.numpy(), rule(*dims), what, f"{label} {kind} {variable.name}")

    def result(self):
        """Every problem found, the pooled comparisons' included (the pools hold unit-scale draws)."""
        pooled = [p for (pool, kind), parts in self.pools.items()
                  for p in problems(np.concatenate(parts), (kind, 1.0), f"{pool} (all, pooled)")]
        return self.found + pooled


def layer_kind(layer):
    return ("bn" if isinstance(layer, keras.layers.BatchNormalization) else
            "depthwise" if isinstance(layer, keras.layers.DepthwiseConv2D) else
            "conv" if isinstance(layer, keras.layers.Conv2D) else
            "linear" if isinstance(layer, keras.layers.Dense) else None)


def compare_network(net, table, label, comparison):
    for layer in net.layers:
        comparison.layer(layer, table, label)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_weight_starts_as_the_reference_draws_it(name):
    keras.utils.set_random_seed(0)
    comparison = Comparison()
    for shape in SHAPES.get(name, [(32, 32, 3)]):
        net = backbones.build_network(name, shape, 100, name=f"{name}_{shape[0]}px")
        compare_network(net, BACKBONES[name], f"{name} at {shape[0]} px", comparison)
    found = comparison.result()
    assert not found, "\n".join(found)


# --- Every method's own layers --------------------------------------------------------------------

SMALL = (16, 16, 3)


def nets(*names, shape=SMALL):
    return [backbones.build_network(n, shape, 10, name=f"net{k}") for k, n in enumerate(names)]


def branches(name, count, split=None, shape=SMALL):
    trunk, heads = backbones.build_branches(name, shape, 10, num_branches=count, split=split)
    return dict(branches=heads, trunk=trunk)


def teacher():
    net = backbones.build_network("resnet8", SMALL, 10, name="teacher")
    return keras.Model(net.input, net.outputs[0])


#: (method, backbone whose linear rule "network" layers follow, constructor arguments).
CASES = [
    ("ffl", "resnet8", lambda: branches("resnet8", 2)),
    # Mixed sizes: resnet8's 4x4 map is strided down to MobileNetV2's 1x1 by the spatial adapter.
    ("ffl", "resnet8", lambda: dict(branches=nets("resnet8", "mobilenetv2"))),
    ("dml", "resnet8", lambda: dict(branches=nets("resnet8", "resnet8"))),
    ("one", "resnet8", lambda: branches("resnet8", 3)),
    ("one", "mobilenetv2", lambda: branches("mobilenetv2", 2)),
    ("afd", "resnet8", lambda: dict(branches=nets("resnet8", "wrn10_2"))),
    ("ffcl", "resnet8", lambda: dict(branches=nets("resnet8", "resnet8"))),
    ("vanilla", "resnet8", lambda: dict(branches=nets("resnet8"))),
    ("kd", "resnet8", lambda: dict(branches=nets("resnet8"), teacher=teacher())),
    ("cl_ilr", "resnet8", lambda: dict(**branches("resnet8", 3), preset="okddip")),
    ("okddip", "resnet8", lambda: branches("resnet8", 3)),
    ("okddip", "mobilenetv2", lambda: branches("mobilenetv2", 3)),
    ("kdcl", "resnet8", lambda: dict(branches=nets("resnet8", "resnet8"))),
    ("mcl_okd", "resnet8", lambda: dict(**branches("resnet8", 3, split="stage1"), memory_size=512, nce_k=4)),
    ("pcl", "resnet8", lambda: branches("resnet8", 3)),
    ("pcl", "mobilenetv2", lambda: branches("mobilenetv2", 2)),
]


def test_every_method_is_built():
    assert {method for method, _, _ in CASES} == set(methods.METHODS)


def method_table(path, network):
    for pattern, table in METHOD_LAYERS:
        if re.match(pattern, path):
            return BACKBONES[network] if table == "network" else table
    return None


@pytest.mark.parametrize("method, network, arguments", CASES,
                         ids=[f"{m}-{n}-{i}" for i, (m, n, _) in enumerate(CASES)])
def test_every_method_layer_starts_as_the_reference_draws_it(method, network, arguments):
    keras.utils.set_random_seed(0)
    model = methods.METHODS[method](**arguments())
    inner = list(model._flatten_layers(include_self=False, recursive=True))
    in_networks = {id(v) for net in inner if isinstance(net, keras.Model) for v in net.variables}
    prefix, label = model.name + "/", f"{method} on {network}"
    comparison, covered = Comparison(), set(in_networks)
    for layer in inner:
        if layer_kind(layer) is None or not layer.weights or id(layer.weights[0]) in in_networks:
            continue
        path = layer.weights[0].path.removeprefix(prefix).rsplit("/", 1)[0]
        table = method_table(path + "/", network)
        if table is None:
            comparison.found.append(f"{label}: {path} ({type(layer).__name__}) belongs to no reference layer")
        else:
            comparison.layer(layer, table, f"{label} {path.split('/')[0]}", path)
        covered |= {id(v) for v in layer.weights}
    for variable in model.variables:
        if id(variable) in covered:
            continue
        rule = method_bookkeeping(variable.name, variable, model)
        what = f"{label}: {variable.path.removeprefix(prefix)}"
        if rule is None:
            comparison.found.append(f"{what} has no reference rule")
        else:
            comparison.add(variable.numpy(), rule, what, f"{label} {variable.name}")
    if method == "pcl":  # the temporal mean starts as a copy of the network
        for student, ema in zip(model.student_models(), model.ema_models()):
            for a, b in zip(student.weights, ema.weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    found = comparison.result()
    assert not found, "\n".join(found)


# --- The comparison bites -------------------------------------------------------------------------

def drawn(layer, input_shape):
    layer.build(input_shape)
    return layer


@pytest.mark.parametrize("layer, table, input_shape", [
    # What keras_ffl drew before issue 25: Keras's fans on a depthwise kernel.  The fusion
    # module's 3x3x128 kernel started 11x larger than the FFL code's N(0, 0.0417).
    (lambda: keras.layers.DepthwiseConv2D(3, depthwise_initializer=keras.initializers.VarianceScaling(
        2.0, "fan_out", "untruncated_normal")), METHOD_LAYERS[0][1], (None, 8, 8, 128)),
    # ShuffleNetV2's depthwise kernels 5x (24 channels) and 8x (58) smaller than PyTorch's default.
    (lambda: keras.layers.DepthwiseConv2D(3, depthwise_initializer=keras.initializers.VarianceScaling(
        1.0 / 3.0, "fan_in", "uniform")), BACKBONES["shufflenetv2"], (None, 8, 8, 24)),
    (lambda: keras.layers.DepthwiseConv2D(3, depthwise_initializer=keras.initializers.VarianceScaling(
        1.0 / 3.0, "fan_in", "uniform")), BACKBONES["shufflenetv2"], (None, 8, 8, 58)),
    # A subtler slip: fan_in for fan_out on a 3x3 16 -> 32 conv, a factor sqrt(2) in std.
    (lambda: keras.layers.Conv2D(32, 3, kernel_initializer=keras.initializers.VarianceScaling(
        2.0, "fan_in", "untruncated_normal")), BACKBONES["resnet8"], (None, 8, 8, 16)),
    # A gate bias left at Keras's zeros where nn.Linear draws U(+-1/sqrt(fan_in)).
    (lambda: keras.layers.Dense(3), BACKBONES["resnet8"], (None, 32)),
])
def test_a_wrong_fan_rule_fails_the_same_comparison(layer, table, input_shape):
    keras.utils.set_random_seed(0)
    comparison = Comparison()
    comparison.layer(drawn(layer(), input_shape), table, "wrong rule")
    assert comparison.result()


def test_the_right_rule_passes_at_the_sizes_of_the_issue():
    """The sizes issue 25 measured, drawn by the reference formula itself, pass: the
    tolerance is no tighter than sampling error."""
    rng = np.random.default_rng(0)
    for shape, rule in [((3, 3, 128, 1), ("normal", math.sqrt(2 / (9 * 128)))),
                        ((3, 3, 24, 1), ("uniform", 1 / 3)), ((3, 3, 58, 1), ("uniform", 1 / 3)),
                        ((64, 100), ("uniform", 1 / 8)), ((3, 3, 3, 16), ("normal", math.sqrt(2 / (9 * 16))))]:
        for _ in range(20):
            kind, scale = rule
            values = rng.normal(0, scale, shape) if kind == "normal" else rng.uniform(-scale, scale, shape)
            assert not problems(values, rule, str(shape))


def test_the_depthwise_rule_survives_a_keras_file(tmp_path):
    from keras_ffl.initializers import TorchVarianceScaling

    model = keras.Sequential([keras.Input((8, 8, 24)), keras.layers.DepthwiseConv2D(
        3, depthwise_initializer=TorchVarianceScaling(1.0 / 3.0, "fan_in", "uniform", depthwise=True))])
    model.save(tmp_path / "depthwise.keras")
    loaded = keras.saving.load_model(tmp_path / "depthwise.keras").layers[0]
    rule = loaded.depthwise_initializer
    assert isinstance(rule, TorchVarianceScaling) and rule.depthwise and rule.mode == "fan_in"
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), loaded.kernel.numpy())
