"""The papers' analyses on a trained run or zoo model: Grad-CAM grids and feature-map similarity.

    python -m keras_ffl.analyze gradcam --name=ffl_resnet8x2_fashion_mnist \\
        --baseline=vanilla_resnet8_fashion_mnist --output=gradcam.png
    python -m keras_ffl.analyze similarity --name=dml_resnet8x2_fashion_mnist

* ``gradcam`` (FFL Fig. 3): for the same test images, the Grad-CAM heatmap of every
  sub-network, of the fused classifier where the method has one, and of a baseline network
  (e.g. the vanilla zoo model), in one PNG grid.  Grad-CAM (Selvaraju et al.): the gradient
  of the explained class's logit with respect to the last feature map, averaged over space,
  weighs the map's channels; ReLU; bilinear upsampling to the image; each map scaled to
  [0, 1].  The explained class is the part's own prediction unless ``--explain=label``.
* ``similarity`` (AFD Table 7): for every pair of sub-networks with equal-shaped last feature
  maps, over the test images: ``L1`` = mean over images of the mean absolute element
  difference; ``L2`` = mean over images of the Euclidean norm of the difference;
  ``cosine`` = mean over images of the cosine between the flattened maps.
"""

import itertools
import os
import sys

from absl import flags

from keras_ffl.cli import run_main
from keras_ffl.config import ConfigError
from keras_ffl.command_line import parse_command

COMMANDS = ("gradcam", "similarity")


# ---------------------------------------------------------------------- formulas
def feature_similarity(a, b):
    """``a``, ``b``: [N, ...] feature maps of two networks on the same N images."""
    import numpy as np

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"feature maps differ in shape: {a.shape} and {b.shape}")
    diff = a - b
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return {
        "L1": float(np.mean(np.mean(np.abs(diff), axis=1))),
        "L2": float(np.mean(np.linalg.norm(diff, axis=1))),
        "cosine": float(np.mean(cosine)),
    }


def gradcam(explained, images, classes=None):
    """Grad-CAM maps for ``explained(images) -> (logits, feature_map)``.

    Returns ``(cams [N, H, W] in [0, 1] at the images' size, explained classes [N])``.
    """
    import numpy as np
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)  # records the path to the feature map even where no variable is on it
        logits, feature_map = explained(images)
        logits = tf.cast(logits, tf.float32)
        chosen = tf.argmax(logits, axis=-1, output_type=tf.int32) if classes is None else tf.constant(classes, tf.int32)
        score = tf.reduce_sum(tf.gather(logits, chosen, batch_dims=1))
    grads = tape.gradient(score, feature_map)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))
    cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", tf.cast(feature_map, tf.float32), weights))
    cams = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    cams = tf.math.divide_no_nan(cams, peak)
    return np.asarray(cams), np.asarray(chosen)


def explainers(model):
    """``{part: images -> (logits, last feature map)}`` for each sub-network and the fused
    classifier (FFL, FFCL): what Grad-CAM differentiates."""

    def network(k):
        def run(images):
            outputs = model.forward(images, training=False)
            return outputs["logits"][k], outputs["features"][k]

        return run

    parts = {f"net{k}": network(k) for k in range(model.num_branches)}
    if getattr(model, "fusion", None) is not None:
        def fused(images):
            return model.fusion(model.fused_maps(model.forward(images, training=False)), training=False)

        parts["fused"] = fused
    return parts


# ------------------------------------------------------------------------ inputs
def load_source(name="", model_dir=""):
    """A zoo name or a run directory -> (method model, config, label for titles)."""
    if bool(name) == bool(model_dir):
        raise ConfigError("give exactly one of --name (a zoo model) or --model_dir (a run directory)")
    if name:
        from keras_ffl.zoo import load_method_model

        model, config = load_method_model(name)
        return model, config, name
    from keras_ffl.build import load_run

    model, config = load_run(model_dir)
    return model, config, os.path.basename(os.path.normpath(model_dir))


def test_images(config, count, data_dir=""):
    """The first ``count`` test images: (standardised inputs, raw pixels, labels)."""
    import numpy as np

    from keras_ffl.data.augment import normalize
    from keras_ffl.export import parity_images

    pixels, labels = parity_images(config, count, data_dir)
    inputs = np.asarray(normalize(pixels, *config.normalization))
    return inputs, pixels, labels


# ------------------------------------------------------------------------ drawing
def gradcam_grid(rows, pixels, labels, class_names, path):
    """``rows``: [(title, cams, classes)], one row per model; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(pixels)
    fig, axes = plt.subplots(len(rows) + 1, count, figsize=(1.6 * count, 1.7 * (len(rows) + 1)), squeeze=False)
    gray = pixels[..., 0] if pixels.shape[-1] == 1 else pixels / 255.0
    for i in range(count):
        axes[0, i].imshow(gray[i], cmap="gray" if pixels.shape[-1] == 1 else None)
        axes[0, i].set_title(str(class_names[labels[i]])[:12], fontsize=7)
        for r, (title, cams, classes) in enumerate(rows, start=1):
            axes[r, i].imshow(gray[i], cmap="gray" if pixels.shape[-1] == 1 else None)
            axes[r, i].imshow(cams[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            color = "green" if classes[i] == labels[i] else "red"
            axes[r, i].set_title(str(class_names[classes[i]])[:12], fontsize=7, color=color)
    for r, (title, _, _) in enumerate([("input", None, None)] + rows):
        axes[r, 0].set_ylabel(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Grad-CAM (title: explained class; green = correct)", fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- CLI
def define_flags(flag_values):
    flags.DEFINE_string("name", "", "Zoo model to analyse.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "", "Or: a run directory.", flag_values=flag_values)
    flags.DEFINE_string("baseline", "", "gradcam: a zoo name or run directory whose net0 is shown as the baseline row "
                        "(e.g. vanilla_resnet8_fashion_mnist).", flag_values=flag_values)
    flags.DEFINE_integer("examples", 8, "gradcam: images in the grid; similarity: test images used (0 = 1000).",
                         flag_values=flag_values)
    flags.DEFINE_enum("explain", "prediction", ["prediction", "label"], "gradcam: which class each map explains.",
                      flag_values=flag_values)
    flags.DEFINE_string("output", "", "gradcam: PNG path (default gradcam_<source>.png).", flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Data location override.", flag_values=flag_values)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)

    def body():
        import numpy as np

        command, fv = parse_command(argv, COMMANDS, "analyze", define_flags)
        if fv.examples < 0:
            raise ConfigError("--examples must be >= 0")
        model, config, label = load_source(fv.name, fv.model_dir)
        if command == "similarity":
            inputs, _, _ = test_images(config, fv.examples or 1000, fv.data_dir)
            features = [np.asarray(f) for f in model.forward(inputs, training=False)["features"]]
            print(f"feature-map similarity of {label}'s sub-networks on {len(inputs)} test images\n")
            print("| pair | L1 | L2 | cosine |\n|---|---:|---:|---:|")
            for i, j in itertools.combinations(range(len(features)), 2):
                if features[i].shape != features[j].shape:
                    print(f"| net{i}-net{j} | maps differ in shape {features[i].shape[1:]} / {features[j].shape[1:]} |||")
                    continue
                s = feature_similarity(features[i], features[j])
                print(f"| net{i}-net{j} | {s['L1']:.4f} | {s['L2']:.3f} | {s['cosine']:.4f} |")
            return 0
        inputs, pixels, labels = test_images(config, fv.examples or 8, fv.data_dir)
        classes = labels if fv.explain == "label" else None
        rows = [(part, *gradcam(run, inputs, classes)) for part, run in explainers(model).items()]
        if fv.baseline:
            is_dir = os.path.exists(os.path.join(fv.baseline, "config.json"))
            base, base_config, _ = load_source("" if is_dir else fv.baseline, fv.baseline if is_dir else "")
            if base_config.dataset != config.dataset:
                raise ConfigError(f"--baseline is trained on {base_config.dataset}, the model on {config.dataset}")
            rows.append((f"{base_config.method} net0", *gradcam(explainers(base)["net0"], inputs, classes)))
        output = fv.output or f"gradcam_{label}.png"
        names = config.labels
        gradcam_grid(rows, pixels, labels, names, output)
        print(f"wrote {output}: Grad-CAM of {', '.join(r[0] for r in rows)} on {len(inputs)} test images")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
