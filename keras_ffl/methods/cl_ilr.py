"""CL-ILR: Collaborative Learning with intermediate-level representation sharing and
backpropagation rescaling (Song & Chai, NeurIPS 2018).

H classifier heads share lower layers.  Each head learns from the labels and from the
average of the *other* heads' logits, softened:

    L = sum_h [ ce_weight * CE(z_h) + kd_weight * kl(z_h <- (1/(H-1)) sum_{j != h} z_j) ]

Backpropagation rescaling: where a tensor feeds H children, the gradient it passes down is
the *mean* of the children's gradients instead of their sum (``ILR_H``: forward identity,
backward 1/H), so shared layers learn at the scale of single-head training.

Sharing: ``flat`` (every head forks at one point, the ``trunk``'s output) or ``tree``
(binary hierarchy: the ``trunk`` feeds ceil(H/2) ``middles``, each feeding two heads, with
``ILR_2`` at both forks, so the root gets 1/4 of the sum of four heads' gradients).

No official code exists; two re-implementations disagree, and each is a preset
(``preset=``; METHODS.md part 2, section 1):

* ``"mcl_okd"`` (winycg/MCL-OKD ``main_cifar_cl_ilr.py``, matching the paper's beta = 0.5,
  T = 2): tree sharing, targets detached, ``ce_weight = kd_weight = 0.5``, the textbook KL
  (no +1e-7), no ramp-up, and a per-epoch cosine learning rate in its flagfile;
* ``"okddip"`` (DefangChen/OKDDip ``train_one.py --avg --bpscale``): flat sharing at ONE's
  split, targets *not* detached (gradients reach the other heads through them), weights 1:1,
  the FFL/ONE KL with +1e-7, T = 3 and the 80-epoch ramp-up.

Each preset brings its temperature and ramp-up (``cl_ilr_options``, the command line's
defaults too); any preset setting can be overridden by its own argument.
"""

import keras
from keras import layers, ops

from keras_ffl.losses import TEACHER_EPS, cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller, deserialize_model, serialize_model
from keras_ffl.methods.cl_ilr_options import PRESET_DISTILLATION, CLILROptions

#: What each preset sets beside its temperature and ramp-up (``cl_ilr_options``).
PRESETS = {
    "mcl_okd": dict(sharing="tree", detach_target=True, ce_weight=0.5, kd_weight=0.5, teacher_eps=0.0),
    "okddip": dict(sharing="flat", detach_target=False, ce_weight=1.0, kd_weight=1.0, teacher_eps=TEACHER_EPS),
}
assert set(PRESETS) == set(PRESET_DISTILLATION), "a preset is declared in cl_ilr_options and described here"
SHARINGS = ("flat", "tree")


@keras.saving.register_keras_serializable(package="keras_ffl")
class BackpropRescale(layers.Layer):
    """``ILR_H``: forward identity, backward the incoming gradient divided by ``children``.

    ``x_sg + (x - x_sg) / H`` equals x exactly in the forward pass (``x - x_sg`` is 0) and has
    derivative 1/H; every child reading the output adds its gradient there, so the input
    receives the mean of the children's gradients."""

    def __init__(self, children, **kwargs):
        super().__init__(**kwargs)
        # Not ``self.children``: on the torch backend a layer is a ``torch.nn.Module``, whose
        # ``children()`` method that name would hide.
        self.num_children = int(children)

    def call(self, x):
        if self.num_children <= 1:
            return x
        frozen = ops.stop_gradient(x)
        return frozen + (x - frozen) / float(self.num_children)

    def get_config(self):
        return {**super().get_config(), "children": self.num_children}


def tree_parents(num_heads):
    """Head k's middle in the binary hierarchy: heads 2b and 2b+1 share middle b."""
    return [k // 2 for k in range(num_heads)]


@keras.saving.register_keras_serializable(package="keras_ffl")
class CLILR(OnlineDistiller):
    method_name = "cl_ilr"

    def __init__(self, branches, num_classes=None, trunk=None, middles=None, preset=CLILROptions().preset, sharing=None,
                 detach_target=None, ce_weight=None, kd_weight=None, teacher_eps=None, backprop_rescaling=True,
                 **kwargs):
        if preset not in PRESETS:
            raise ValueError(f"CL-ILR preset must be one of {tuple(PRESETS)}, got '{preset}'")
        settings = dict(PRESETS[preset])
        given = dict(sharing=sharing, detach_target=detach_target, ce_weight=ce_weight, kd_weight=kd_weight,
                     teacher_eps=teacher_eps)
        settings.update({k: v for k, v in given.items() if v is not None})
        if settings["sharing"] not in SHARINGS:
            raise ValueError(f"CL-ILR sharing must be one of {SHARINGS}, got '{settings['sharing']}'")
        middles = list(middles or [])
        expected = -(-len(branches) // 2) if settings["sharing"] == "tree" else 0
        if len(middles) != expected:
            raise ValueError(f"CL-ILR with {settings['sharing']} sharing and {len(branches)} heads needs {expected} "
                             f"middle models, got {len(middles)}")
        self.preset, self.settings, self.backprop_rescaling = preset, settings, bool(backprop_rescaling)
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.middles = middles
        self.term_weights = {**{f"ce_net{k}": settings["ce_weight"] for k in range(len(self.branches))},
                             **{f"kd_net{k}": settings["kd_weight"] for k in range(len(self.branches))}}
        heads = len(self.branches)
        scale = self.backprop_rescaling
        if settings["sharing"] == "flat":
            self.root_fork = BackpropRescale(heads if scale else 1, name="ilr_root")
            self.middle_forks = []
        else:
            children = [tree_parents(heads).count(b) for b in range(len(middles))]
            self.root_fork = BackpropRescale(len(middles) if scale else 1, name="ilr_root")
            self.middle_forks = [BackpropRescale(c if scale else 1, name=f"ilr_middle{b}")
                                 for b, c in enumerate(children)]

    @property
    def sharing(self):
        return self.settings["sharing"]

    def branch_inputs(self, images, extras, training):
        shared = self.root_fork(self.trunk(images, training=training))
        if self.sharing == "flat":
            return shared, [shared] * len(self.branches)
        middles = [fork(middle(shared, training=training)) for fork, middle in zip(self.middle_forks, self.middles)]
        return shared, [middles[b] for b in tree_parents(len(self.branches))]

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        count = len(logits)
        total = sum(logits[1:], logits[0])
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        for k, z in enumerate(logits):
            others = (total - z) / float(count - 1)  # the mean of the other heads' logits
            terms[f"kd_net{k}"] = distillation_kl(z, others, self.temperature, detach=self.settings["detach_target"],
                                                  eps=self.settings["teacher_eps"])
        return terms

    def distillation_defaults(self):
        return CLILROptions(preset=self.preset).distillation_defaults()

    def get_config(self):
        return {**super().get_config(), "middles": [serialize_model(m) for m in self.middles], "preset": self.preset,
                **self.settings, "backprop_rescaling": self.backprop_rescaling}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["middles"] = [deserialize_model(m) for m in config.get("middles") or []]
        return super().from_config(config)
