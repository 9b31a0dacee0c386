"""Classify image files with an exported keras_ffl ONNX model, using onnxruntime only.

    python export/predict_onnx.py exports/ffl_resnet8x2_fashion_mnist_net0/model.onnx export/samples/*.png

Needs onnxruntime, numpy and Pillow (no TensorFlow).  Reads ``metadata.json`` next to the
model for the input size, channel count and class names.  Preprocessing (scaling and
standardisation) is inside the exported graph: the model takes float32 pixels in [0, 255].
Images are converted to the model's channel count and resized to its input size; for
Fashion-MNIST use images like the dataset's (a centred item, dark background).
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_image(path, height, width, channels):
    image = Image.open(path).convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    return pixels.reshape(height, width, channels)


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model.onnx written by python -m keras_ffl.export")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG...)")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    args = parser.parse_args(argv)

    metadata_path = os.path.join(os.path.dirname(os.path.abspath(args.model)), "metadata.json")
    if not os.path.exists(args.model) or not os.path.exists(metadata_path):
        print(f"error: need {args.model} and the metadata.json beside it", file=sys.stderr)
        return 2
    with open(metadata_path) as f:
        metadata = json.load(f)
    _, height, width, channels = metadata["input"]["shape"]
    names = [str(n) for n in metadata["class_names"]]
    try:
        batch = np.stack([load_image(p, height, width, channels) for p in args.images])
    except (OSError, ValueError) as e:
        print(f"error: cannot read an image: {e}", file=sys.stderr)
        return 2
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    probabilities = softmax(session.run(None, {session.get_inputs()[0].name: batch})[0])
    for path, p in zip(args.images, probabilities):
        best = np.argsort(-p)[: args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} {100 * p[i]:.1f}%" for i in best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
