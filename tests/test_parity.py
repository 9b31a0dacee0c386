"""keras_ffl against independent PyTorch references of the authors' networks
(``keras_ffl/torch_reference.py``), with keras_ffl's weights copied across.

* Every backbone with a PyTorch reference pads exactly as it does: logits and last feature
  maps agree to 1e-4 (Keras's ``padding="same"`` at stride 2 would shift the sampling grid by
  one pixel and change the logits by up to 14).
* The official FFL network (two ResNet-32 branches on a shared trunk, the fusion module):
  logits, fused logits and the FFL loss agree to 1e-4; after one step of the FFL code's
  optimiser (Nesterov SGD, coupled weight decay, 1e-5 for the fusion module) every trainable
  weight and BN running mean agrees within the float32 noise of that step, measured here as
  the PyTorch reference in float32 (on the batch and on the batch reversed) against float64.
  In float32 each side's step is the elementwise median of the step on the batch in three
  orders: one run can switch a ReLU (see ``ORDERS``).  (BN running variances are not compared:
  PyTorch updates them with the unbiased batch variance, Keras with the biased one, a factor
  n / (n - 1) on the 10% new part.)
"""

import copy

import keras
import numpy as np
import pytest
import torch

from helpers import assert_within_float32_noise
from keras_ffl import FFL, backbones
from keras_ffl import torch_reference as ref
from keras_ffl.build import set_precision


def randomize_batch_norm(layers, rng):
    """BN statistics and affine parameters away from 0/1, so that the comparison sees them."""
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 1.5, n)])


def all_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)]


def weights_by_name(layers):
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in layers if layer.get_weights()}


@pytest.mark.parametrize("backbone,size,reference", [
    ("resnet32", 32, lambda: ref.CifarResNet(32, 100)),
    ("wrn16_2", 32, lambda: ref.WideResNet(16, 2, 100)),
    ("resnet18", 32, lambda: ref.ResNet(18, 100, imagenet_stem=False)),
    ("resnet34", 64, lambda: ref.ResNet(34, 100, imagenet_stem=True)),
    ("densenet40_12", 32, lambda: ref.DenseNetBC(100)),
    ("vgg16", 32, lambda: ref.VGG16(100)),
    ("shufflenetv2", 32, lambda: ref.ShuffleNetV2(100)),
    ("mobilenetv2", 32, lambda: ref.MobileNetV2(100)),
], ids=["resnet32", "wrn16_2", "resnet18-cifar-stem", "resnet34-imagenet-stem", "densenet40_12", "vgg16",
        "shufflenetv2", "mobilenetv2"])
def test_every_backbone_pads_as_its_pytorch_reference(backbone, size, reference):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    network = backbones.build_network(backbone, (size, size, 3), 100)
    randomize_batch_norm(network.layers, rng)
    torch_net = reference().eval()
    ref.port(weights_by_name(network.layers), torch_net)
    images = rng.normal(size=(4, size, size, 3)).astype("float32")
    logits, features = network(images, training=False)
    with torch.no_grad():
        torch_logits, torch_features = torch_net(ref.nchw(images))
    np.testing.assert_allclose(np.asarray(logits), torch_logits.numpy(), atol=1e-4, rtol=1e-4)
    # The maps of a randomly initialised deep network reach tens: 1e-4 of their scale.
    scale = float(np.max(np.abs(torch_features.numpy())))
    np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2), torch_features.numpy(),
                               atol=1e-4 * max(scale, 1.0), rtol=1e-4)


EPOCH, RAMPUP, LR, WEIGHT_DECAY, FUSION_WEIGHT_DECAY = 40, 80, 0.1, 1e-4, 1e-5


@pytest.fixture(scope="module")
def ffl_pair():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    trunk, heads = backbones.build_branches("resnet32", (32, 32, 3), 100, num_branches=2)
    model = FFL(heads, trunk=trunk, rampup_epochs=RAMPUP, weight_decay=WEIGHT_DECAY,
                fusion_weight_decay=FUSION_WEIGHT_DECAY)
    randomize_batch_norm(all_layers(model), rng)
    model.epoch.assign(float(EPOCH))
    torch_model = ref.FFL(32, 100)
    ref.port(weights_by_name(trunk.layers), torch_model.trunk)
    for head, torch_head in zip(heads, torch_model.heads):
        ref.port(weights_by_name(head.layers), torch_head)
    ref.port(weights_by_name(all_layers(model.fusion)), torch_model.fusion)
    images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 100, 8)
    return model, torch_model, images, labels


def test_the_official_ffl_network_gives_the_same_logits_and_loss(ffl_pair):
    model, torch_model, images, labels = ffl_pair
    outputs = model(images, training=False)
    torch_model = copy.deepcopy(torch_model).eval()
    with torch.no_grad():
        logits, fused = torch_model(ref.nchw(images))
    for k, z in enumerate(logits):
        np.testing.assert_allclose(np.asarray(outputs[f"net{k}"]), z.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["fused"]), fused.numpy(), atol=1e-4, rtol=1e-4)


def torch_step(torch_model, images, labels, dtype):
    torch_model = copy.deepcopy(torch_model).to(dtype).train()
    optimizer = ref.sgd(torch_model, LR, WEIGHT_DECAY, FUSION_WEIGHT_DECAY)
    logits, fused = torch_model(ref.nchw(images).to(dtype))
    loss = ref.ffl_loss(logits, fused, torch.from_numpy(labels), 3.0, ref.rampup(EPOCH, RAMPUP))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return torch_model, float(loss.detach())


def torch_state(torch_model):
    """Every trainable parameter and BN running mean, by the Keras layer name it came from."""
    state = {}
    for prefix, module in [("trunk", torch_model.trunk), *[(f"net{k}", h) for k, h in enumerate(torch_model.heads)],
                           ("fusion", torch_model.fusion)]:
        for name, layer in module.named.items():
            for param, value in layer.state_dict().items():
                if param in ("running_var", "num_batches_tracked"):
                    continue
                state[f"{prefix}/{name}/{param}"] = value.detach().double().numpy()
    return state


def keras_state(model):
    """The same names, from the Keras model, in PyTorch's layouts."""
    torch_layout = ref.FFL(32, 100).double()  # float64, so a float64 model's weights stay exact
    ref.port(weights_by_name(model.trunk.layers), torch_layout.trunk)
    for head, torch_head in zip(model.branches, torch_layout.heads):
        ref.port(weights_by_name(head.layers), torch_head)
    ref.port(weights_by_name(all_layers(model.fusion)), torch_layout.fusion)
    return torch_state(torch_layout)


def twin(model, policy):
    """The same FFL model and weights in ``policy``, compiled with the FFL code's SGD."""
    set_precision(policy)
    try:
        trunk, heads = backbones.build_branches("resnet32", (32, 32, 3), 100, num_branches=2)
        twin = FFL(heads, trunk=trunk, rampup_epochs=RAMPUP, weight_decay=WEIGHT_DECAY,
                   fusion_weight_decay=FUSION_WEIGHT_DECAY)
        twin.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9, nesterov=True))  # lr in its precision
    finally:
        set_precision("float32")
    twin.set_weights(model.get_weights())
    twin.epoch.assign(float(EPOCH))
    return twin


#: The batch in three orders.  A float32 step through 2 x 340,000 ReLUs a batch can switch
#: one: an input within rounding of zero lands on the other side in one run and not in
#: another, and one position's gradient goes through or not.  Measured on this test's network:
#: one run's largest difference from PyTorch's reached 40x its float32 tolerance (1.7e-5 on one
#: kernel), whatever the BatchNorm kernel, while the other orders of the same batch stayed
#: within 0.03-0.7x.  A switch hits one run, so the elementwise median of three runs is free of
#: it; a defect moves all three alike, and the median with them.
ORDERS = (slice(None), slice(None, None, -1), np.roll(np.arange(8), 3))
#: Keras's noise sample: an order of its own, so that no run under test measures its own bound.
NOISE_ORDER = np.roll(np.arange(8)[::-1], 3)


def median_of_orders(step, images, labels):
    """The elementwise median of ``step(images, labels)`` (a state dict) over ``ORDERS``, and
    the states themselves."""
    states = [step(images[order].copy(), labels[order].copy()) for order in ORDERS]
    return {name: np.median(np.stack([state[name] for state in states]), axis=0) for name in states[0]}, states


def test_one_sgd_step_of_the_official_ffl_code_gives_the_same_weights(ffl_pair):
    """In float64 the two agree to 1e-7 of each array's size (the semantics: loss, gradients,
    weight decay, Nesterov); in float32 the median over ``ORDERS`` of each side's step agrees
    within float32 noise, and a dropped update or a misweighted KD term (the ramp-up read 20
    epochs late) fails it.  The noise samples are each framework's float32 step on the batch
    reversed (TensorFlow's float32 kernels are far less accurate than PyTorch's on some CPUs,
    so PyTorch's noise alone would call an honest Keras step faulty) and PyTorch's on the batch."""
    model, torch_model, images, labels = ffl_pair
    before = keras_state(model)
    exact = twin(model, "float64")
    exact.train_on_batch(images.astype("float64"), labels)

    def keras_step(epoch):
        def step(batch, batch_labels):
            stepped = twin(model, "float32")
            stepped.epoch.assign(float(epoch))
            losses.append(stepped.train_on_batch(batch, batch_labels, return_dict=True)["loss"])
            return keras_state(stepped)
        return step

    def torch_step32(batch, batch_labels):
        stepped, loss = torch_step(torch_model, batch, batch_labels, torch.float32)
        losses.append(loss)
        return torch_state(stepped)

    losses = []
    after, _ = median_of_orders(keras_step(EPOCH), images, labels)
    torch32, torch_runs = median_of_orders(torch_step32, images, labels)
    keras_loss, torch_loss = losses[0], losses[len(ORDERS)]
    assert keras_loss == pytest.approx(torch_loss, abs=1e-4, rel=1e-4)  # the FFL loss (before weight decay)
    stepped64, _ = torch_step(torch_model, images, labels, torch.float64)
    torch64 = torch_state(stepped64)
    samples = [*torch_runs[:2], keras_step(EPOCH)(images[NOISE_ORDER].copy(), labels[NOISE_ORDER].copy())]
    moved = sum(not np.allclose(after[n], before[n]) for n in after)
    assert moved > 0.9 * len(after)
    assert_within_float32_noise(after, torch32, samples, torch64, what="keras_ffl vs the FFL code after one step")
    after64 = keras_state(exact)
    for name, reference in torch64.items():
        # Measured: at most 9e-9 of an array's size (a constant rounded to float32 on one
        # side); a dropped or misrouted term moves the step by 1e-3 and more.
        scale = max(float(np.abs(reference).max()), 1e-12)
        assert float(np.abs(after64[name] - reference).max()) <= 1e-7 * scale, name
    with pytest.raises(AssertionError, match="more than its float32 tolerance"):
        assert_within_float32_noise(before, torch32, samples, torch64, what="a dropped update")
    misweighted = keras_step(EPOCH + 20)(images, labels)
    with pytest.raises(AssertionError, match="more than its float32 tolerance"):
        assert_within_float32_noise(misweighted, torch32, samples, torch64, what="a misweighted KD term")
