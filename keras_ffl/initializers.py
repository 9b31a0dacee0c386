"""The initialisers of the authors' PyTorch code, one function per rule (BUILD.md lists which
layer of which reference uses which).

PyTorch computes a weight's fans from its shape ``(out, in / groups, kh, kw)``: ``fan_in =
in / groups * kh * kw`` and ``fan_out = out * kh * kw``.  For a Keras ``Conv2D`` or ``Dense``
kernel that is Keras's own rule, and those layers get Keras's built-in initialisers (a plain
network stays loadable without keras_ffl).  A Keras depthwise kernel ``(kh, kw, C, m)`` is a
PyTorch convolution with ``groups = C`` and ``out = C * m``: PyTorch's fans are ``kh * kw`` and
``kh * kw * C * m``, where Keras's rule gives ``kh * kw * C`` and ``kh * kw * m``.  Depthwise
kernels therefore get ``TorchVarianceScaling(depthwise=True)``.

Every rule draws through ``keras.random`` with Keras's seeding, so an initialiser that matches
Keras's built-in one draws the same numbers.
"""

import math

import keras

DISTRIBUTIONS = ("untruncated_normal", "uniform")


def torch_fans(shape, depthwise=False):
    """``(fan_in, fan_out)`` as PyTorch computes them for the Keras kernel ``shape``."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        fan = shape[0] if shape else 1
        return fan, fan
    receptive = math.prod(shape[:-2])
    if depthwise:  # (kh, kw, C, m): groups = C, out_channels = C * m
        return receptive, receptive * shape[-2] * shape[-1]
    return receptive * shape[-2], receptive * shape[-1]


@keras.saving.register_keras_serializable(package="keras_ffl")
class TorchVarianceScaling(keras.initializers.VarianceScaling):
    """``VarianceScaling`` with PyTorch's fans: ``N(0, sqrt(scale / fan))`` or
    ``U(-sqrt(3 scale / fan), sqrt(3 scale / fan))``, ``fan`` by ``torch_fans``; with
    ``depthwise=True`` for a ``DepthwiseConv2D`` kernel."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="untruncated_normal", depthwise=False, seed=None):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got '{distribution}'")
        super().__init__(scale, mode, distribution, seed=seed)
        self.depthwise = bool(depthwise)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = torch_fans(shape, self.depthwise)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(self.mode, (fan_in + fan_out) / 2.0)
        variance = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return keras.random.uniform(shape, minval=-limit, maxval=limit, dtype=dtype, seed=self.seed)
        return keras.random.normal(shape, mean=0.0, stddev=math.sqrt(variance), dtype=dtype, seed=self.seed)

    def get_config(self):
        config = {k: v for k, v in super().get_config().items() if k not in ("input_axes", "output_axes")}
        return {**config, "depthwise": self.depthwise}


def _scaled(scale, mode, distribution, depthwise):
    if depthwise:
        return TorchVarianceScaling(scale, mode, distribution, depthwise=True)
    return keras.initializers.VarianceScaling(scale, mode, distribution)


def kaiming_normal(mode="fan_out", depthwise=False):
    """``N(0, sqrt(2 / fan))``: ``nn.init.kaiming_normal_(w, mode=mode)`` (ReLU gain), which is
    also the FFL / ONE / RepDistiller loop ``w.normal_(0, sqrt(2 / n)), n = kh * kw * out``."""
    return _scaled(2.0, mode, "untruncated_normal", depthwise)


def torch_default(depthwise=False):
    """PyTorch's default ``nn.Conv2d`` / ``nn.Linear`` weight, ``kaiming_uniform_(a=sqrt(5))``:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, std ``1/sqrt(3 fan_in)`` (PyTorch >= 1.0)."""
    return _scaled(1.0 / 3.0, "fan_in", "uniform", depthwise)


def torch_bias(fan_in):
    """PyTorch's default bias: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in`` the weight's."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def linear_normal(stddev=0.01):
    """``nn.init.normal_(w, 0, stddev)``: the VGG and MobileNetV2 code's linear layers."""
    return keras.initializers.RandomNormal(0.0, stddev)


def linear_like(network, fan_in, use_bias=True):
    """``(kernel, bias)`` initialisers (``bias`` None without ``use_bias``) for a method's linear
    layer of ``fan_in`` inputs that, in the authors' code, is a module of the multi-branch
    network (ONE's gate, OKDDip's W_q / W_k, PCL's ensemble classifier).  The code's init loop
    runs over every module of that network, so such a layer gets the network's linear rule:
    here, that of ``network``'s last ``Dense`` layer (its classifier), re-evaluated for
    ``fan_in``.  ``N(0, s)`` stays ``N(0, s)``, a zero bias stays zero, anything else is
    PyTorch's default (also where ``network`` has no Dense layer)."""
    dense = [layer for layer in getattr(network, "layers", []) if isinstance(layer, keras.layers.Dense)]
    reference = dense[-1] if dense else None
    bias = None
    if use_bias:
        zero = reference is not None and reference.use_bias and isinstance(reference.bias_initializer,
                                                                            keras.initializers.Zeros)
        bias = keras.initializers.Zeros() if zero else torch_bias(fan_in)
    rule = getattr(reference, "kernel_initializer", None)
    if isinstance(rule, keras.initializers.RandomNormal):
        return keras.initializers.RandomNormal(rule.mean, rule.stddev), bias
    return torch_default(), bias
