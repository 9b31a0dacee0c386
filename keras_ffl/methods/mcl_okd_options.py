"""MCL-OKD's settings and facts (its model: ``mcl_okd.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting


@dataclasses.dataclass(frozen=True)
class MCLOKDOptions(MethodOptions):
    NAME = "mcl_okd"
    TITLE = "MCL-OKD, multi-view contrastive learning for online KD (Yang et al. 2021): memory-bank contrast + KD"
    MODEL = "keras_ffl.methods.mcl_okd:MCLOKD"
    TOPOLOGIES = ("shared",)
    SAME_ARCHITECTURE = True
    DEFAULT_BRANCHES = 4
    # winycg/MCL-OKD: T = 3, the KL at full weight from the first epoch, branches from the early split.
    RAMPUP_EPOCHS = 0
    DEFAULT_SPLIT = "early"
    QUICKSTART_FLAGFILE = "zoo/quickstart_mcl_okd_fashion_mnist.flags"

    nce_k: int = setting(16384, "Negatives per example (the code's default 16384; its README uses 256 for "
                         "ResNet-32/110 and DenseNet-40-12).", low=1, old_flag="nce_k")
    nce_t: float = setting(0.1, "Contrastive temperature tau.", low=0.0, low_open=True, old_flag="nce_t")
    nce_m: float = setting(0.5, "Memory-bank momentum.", low=0.0, high=1.0, high_open=True, old_flag="nce_m")
    embed_dim: int = setting(128, "Embedding dimension.", low=1, old_flag="embed_dim")
    ce_weight: float = setting(1.0, "Weight of each cross-entropy term (gamma).", low=0.0, old_flag="ce_weight")
    kd_weight: float = setting(1.0, "Weight of the last branch's KL to the ensemble (alpha).", low=0.0,
                               old_flag="kd_weight")
    contrastive_weight: float = setting(0.025, "Weight beta of the contrastive loss.", low=0.0,
                                        old_flag="contrastive_weight")

    def data_needs(self, run):
        return dict(with_index=True, negatives=self.nce_k)

    def model_arguments(self, run, context):
        return dict(memory_size=context.train_size, embed_dim=self.embed_dim, nce_k=self.nce_k, nce_t=self.nce_t,
                    nce_m=self.nce_m, ce_weight=self.ce_weight, kd_weight=self.kd_weight,
                    contrastive_weight=self.contrastive_weight)
