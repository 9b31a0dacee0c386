"""Your own data: a folder of labelled images and any TensorFlow Datasets name, through the
command line, the report, evaluate, export and the zoo; bad folders refused before any work;
kill -9 and resume bit-identical on a folder dataset."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from helpers import read_weights
from keras_ffl.config import ConfigError

CLASSES = ("circle", "square", "stripes")


def draw(kind, size, rng):
    """A pattern per class, each in its own hue over a random dark background."""
    image = np.full((size, size, 3), rng.integers(0, 80, 3), np.uint8)
    colour = np.roll(np.array([220, 60, 60]), CLASSES.index(kind)) + rng.integers(-30, 30, 3)
    yy, xx = np.mgrid[:size, :size]
    if kind == "circle":
        image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = colour
    elif kind == "square":
        image[size // 4:3 * size // 4, size // 4:3 * size // 4] = colour
    else:
        image[(yy // max(size // 8, 1)) % 2 == 0] = colour
    return image


def write_folder(root, per_class=(40, 8), test=True, seed=0):
    """Real image files of three kinds of pattern, in several sizes and formats (PNG, JPEG, BMP,
    GIF), one of them greyscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test") if test else ("train",), per_class):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                picture = Image.fromarray(draw(kind, int(rng.choice([20, 28, 32, 40, 57])), rng))
                if i == 3:
                    picture = picture.convert("L")
                extension = ("png", "jpg", "bmp", "gif", "jpeg")[i % 5]
                picture.save(folder / f"{kind}_{i}.{extension}")
    return root


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


FOLDER_FLAGS = ["--method=ffl", "--backbones=resnet8", "--dataset=folder", "--epochs=6", "--batch_size=16",
                "--eval_batch_size=16", "--lr=0.05", "--lr_milestones=5", "--rampup_epochs=1", "--verbose=0"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("images") / "shapes")
    model_dir = tmp_path_factory.mktemp("runs") / "shapes_ffl"
    result = run("-m", "keras_ffl.train", *FOLDER_FLAGS, f"--data_dir={root}", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, model_dir, result


def test_a_folder_of_images_trains_end_to_end_and_learns(folder_run):
    root, model_dir, _ = folder_run
    report = json.loads((model_dir / "report.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    assert report["class_names"] == list(CLASSES) == config["class_names"]
    assert report["test_examples"] == 24 and config["train_size"] == 120
    assert len(config["mean"]) == len(config["std"]) == 3 and 0 < config["mean"][0] < 1
    for part in ("net0", "net1", "fused"):  # three easy patterns, chance 33%
        assert report["results"][part]["top1"] > 75.0, (part, report["results"][part])
    evaluated = run("-m", "keras_ffl.evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"| net0 | {report['results']['net0']['top1']:.2f} |" in evaluated.stdout


def test_export_and_zoo_carry_the_class_names(folder_run, tmp_path):
    _, model_dir, _ = folder_run
    output = tmp_path / "export"
    exported = run("-m", "keras_ffl.export", f"--model_dir={model_dir}", "--part=net0", "--formats=onnx",
                   f"--output_dir={output}", "--latency_runs=0", "--parity_examples=24")
    assert exported.returncode == 0, exported.stderr[-2000:]
    metadata = json.loads((output / "metadata.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    assert metadata["class_names"] == list(CLASSES)
    assert metadata["preprocessing"]["mean"] == config["mean"] and metadata["input"]["shape"] == [None, 32, 32, 3]
    manifest = tmp_path / "zoo" / "manifest.json"
    published = run("-m", "keras_ffl.zoo", "publish", f"--model_dir={model_dir}", "--name=shapes_ffl",
                    f"--manifest={manifest}")
    assert published.returncode == 0, published.stderr[-2000:]
    entry = json.loads(manifest.read_text())["models"]["shapes_ffl"]
    assert entry["class_names"] == list(CLASSES) and entry["preprocessing"]["std"] == config["std"]
    evaluated = run("-m", "keras_ffl.zoo", "evaluate", "--name=shapes_ffl", f"--manifest={manifest}",
                    f"--cache_dir={tmp_path / 'cache'}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "largest difference 0.00 points" in evaluated.stdout


def test_corrupt_and_wrong_folders_are_one_line_and_exit_2(tmp_path):
    root = write_folder(tmp_path / "shapes", per_class=(6, 2))
    torn = root / "train" / "square" / "square_1.jpg"
    torn.write_bytes(torn.read_bytes()[:40])  # a JPEG cut short
    result = run("-m", "keras_ffl.train", *FOLDER_FLAGS, f"--data_dir={root}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot read image {torn}" in lines[0], result.stderr
    cases = []
    empty = write_folder(tmp_path / "empty", per_class=(3, 1))
    for f in (empty / "train" / "circle").iterdir():
        f.unlink()
    cases.append((empty, "class folder .*circle holds no image"))
    single = tmp_path / "single" / "train" / "only"
    single.mkdir(parents=True)
    (single / "a.png").write_bytes((root / "train" / "circle" / "circle_0.png").read_bytes())
    cases.append((single.parent.parent, "holds 1 class folder"))
    no_test = write_folder(tmp_path / "no_test", per_class=(3,), test=False)
    cases.append((no_test, "has no test/ folder: pass --validation_fraction"))
    cases.append((tmp_path / "nowhere", "needs --data_dir"))
    for folder, message in cases:
        result = run("-m", "keras_ffl.train", *FOLDER_FLAGS, f"--data_dir={folder}", f"--model_dir={tmp_path / 'r2'}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        import re

        assert re.search(message, lines[0]), lines[0]
        assert not (tmp_path / "r2").exists()


def test_without_test_a_stratified_seeded_share_is_held_out(tmp_path):
    from helpers import tiny_config
    from keras_ffl.data import in_memory_split

    root = write_folder(tmp_path / "shapes", per_class=(10,), test=False)
    config = tiny_config(dataset="folder", data_dir=str(root), validation_fraction=0.2, model_dir=str(tmp_path / "r"))
    train_images, train_labels = in_memory_split(config, "train")
    test_images, test_labels = in_memory_split(config, "test")
    assert np.bincount(test_labels).tolist() == [2, 2, 2] and np.bincount(train_labels).tolist() == [8, 8, 8]
    assert train_images.shape[1:] == test_images.shape[1:] == (32, 32, 3)
    again = in_memory_split(config, "test")[0]
    np.testing.assert_array_equal(again, test_images)  # the same seed holds out the same images
    with pytest.raises(ConfigError, match="validation_fraction"):
        tiny_config(dataset="folder", data_dir=str(write_folder(tmp_path / "t", per_class=(3, 1))),
                    validation_fraction=0.2)


def test_large_images_get_the_imagenet_recipe(tmp_path):
    from helpers import tiny_config
    from keras_ffl.data import in_memory_split, recipe_of
    from keras_ffl.data.augment import ResizedCropFlip

    root = write_folder(tmp_path / "shapes", per_class=(3, 1))
    config = tiny_config(dataset="folder", data_dir=str(root), image_size=64, backbones=("resnet18",))
    assert config.augmentation == "resized_crop_flip"
    train_images, _ = in_memory_split(config, "train")
    test_images, _ = in_memory_split(config, "test")
    assert train_images.shape[1:] == (73, 73, 3) and test_images.shape[1:] == (64, 64, 3)  # 64 / 0.875
    recipe = recipe_of(config, train_images.shape[1])
    assert isinstance(recipe, ResizedCropFlip)
    out = recipe.apply(train_images[:4], recipe.draw(np.random.default_rng(0), 4))
    assert out.shape == (4, 64, 64, 3)
    assert tiny_config(dataset="folder", data_dir=str(root)).augmentation == "pad_crop_flip"
    assert tiny_config(dataset="folder", data_dir=str(root), augment="none").augmentation == "none"


def test_any_tfds_name_trains_on_mock_data_and_an_unknown_one_is_refused(tmp_path):
    import tensorflow_datasets as tfds

    from helpers import tiny_config
    from keras_ffl.train import train

    config = tiny_config(dataset="tfds:svhn_cropped", download=False, train_examples=0, test_examples=0,
                         model_dir=str(tmp_path / "svhn"), epochs=1)
    with tfds.testing.mock_data(num_examples=32):
        report = train(config)
    assert report["class_names"] == [str(c) for c in range(10)]
    assert report["test_examples"] == 32 and set(report["results"]) >= {"net0", "fused"}
    saved = json.loads((tmp_path / "svhn" / "config.json").read_text())
    assert saved["train_size"] == 32 and len(saved["mean"]) == 3
    unknown = run("-m", "keras_ffl.train", "--method=ffl", "--dataset=tfds:no_such_dataset", f"--model_dir={tmp_path / 'x'}")
    lines = unknown.stderr.strip().splitlines()
    assert unknown.returncode == 2 and len(lines) == 1 and "tfds:no_such_dataset" in lines[0], unknown.stderr


def test_a_tfds_name_not_on_disk_fails_at_once_when_offline(tmp_path, monkeypatch):
    """tfds would retry every source URL for minutes (210 s measured) and leave partial
    downloads; the check refuses in one line first, and a prepared copy passes it."""
    import time

    from helpers import tiny_config
    from keras_ffl import config as config_module

    monkeypatch.setattr(config_module, "TFDS_HOST", "offline.invalid")  # never resolves (RFC 2606)
    config = tiny_config(dataset="tfds:svhn_cropped", data_dir=str(tmp_path), download=True)
    started = time.time()
    with pytest.raises(ConfigError, match="tfds:svhn_cropped is not prepared in .* and the network is unreachable "
                                          "\\(offline.invalid: .*tfds.builder\\('svhn_cropped'\\)"):
        config_module.check_download_possible(config)
    assert time.time() - started < 10
    (tmp_path / "svhn_cropped" / "3.1.0").mkdir(parents=True)
    (tmp_path / "svhn_cropped" / "3.1.0" / "dataset_info.json").write_text("{}")
    config_module.check_download_possible(config)


def test_a_tfds_dataset_not_prepared_is_one_line_that_says_how_and_download_can_start(tmp_path):
    """Without --download: the error names the dataset and the flag.  With it, tfds gets as far
    as its download (tfds 4.9.10 needs the importlib_resources backport there, which
    keras_ffl declares), here stopped before any network access."""
    import tensorflow_datasets as tfds

    missing = run("-m", "keras_ffl.train", "--method=ffl", "--dataset=tfds:mnist", f"--data_dir={tmp_path}", "--nodownload",
                  f"--model_dir={tmp_path / 'run'}")
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2, missing.stderr
    assert len(lines) == 1, missing.stderr  # tfds's own warnings about the empty folder are held back
    assert "cannot load tfds dataset 'mnist' split 'train'" in lines[0] and "pass --download" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything is created
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert os.path.isdir(str(builder.code_path.parent))  # what download_and_prepare reads first


def test_kill_9_and_resume_on_a_folder_dataset_end_bit_identical(tmp_path):
    from helpers import KILL_AT_STEP

    root = write_folder(tmp_path / "shapes", per_class=(16, 4))
    flags = [f for f in FOLDER_FLAGS if not f.startswith("--epochs")] + ["--epochs=3", f"--data_dir={root}",
                                                                         "--validation_freq=0"]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed = run("-c", KILL_AT_STEP, "4", *flags, f"--model_dir={killed_dir}")  # 3 steps an epoch: mid epoch 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run("-m", "keras_ffl.train", *flags, f"--model_dir={killed_dir}")
    assert resumed.returncode == 0 and "Resuming the run" in resumed.stdout, resumed.stderr[-2000:]
    clean = run("-m", "keras_ffl.train", *flags, f"--model_dir={clean_dir}")
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = read_weights(killed_dir / "model.weights.h5"), read_weights(clean_dir / "model.weights.h5")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_subset_of_a_folder_is_a_seeded_stratified_sample_and_the_run_records_its_classes(tmp_path):
    from helpers import tiny_config
    from keras_ffl.train import train

    root = write_folder(tmp_path / "shapes", per_class=(12, 4))  # the listing is sorted by class
    config = tiny_config(dataset="folder", data_dir=str(root), train_examples=18, test_examples=6, image_size=16,
                         model_dir=str(tmp_path / "run"), validation_freq=0)
    report = train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train_class_counts"] == [6, 6, 6] and saved["test_class_counts"] == [2, 2, 2]
    assert report["train_examples_per_class"] == dict(zip(CLASSES, [6, 6, 6]))
    assert report["test_examples_per_class"] == dict(zip(CLASSES, [2, 2, 2]))
    with pytest.raises(ConfigError, match="--train_examples=2 is fewer than the 3 classes of"):
        tiny_config(dataset="folder", data_dir=str(root), train_examples=2)


def test_16_bit_and_other_modes_decode_to_their_own_range_or_are_refused_in_one_line(tmp_path):
    from PIL import Image

    from keras_ffl.data import folder
    from keras_ffl.errors import DataError

    rng = np.random.default_rng(0)
    for name, level in (("dark", 12000), ("bright", 52000)):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.clip(level + rng.normal(0, 3000, (12, 12)), 0, 65535).astype(np.uint16)
            Image.fromarray(pixels).save(tmp_path / "train" / name / f"{i}.png")  # 16-bit greyscale PNG
    with Image.open(tmp_path / "train" / "dark" / "0.png") as picture:
        assert picture.mode == "I;16"
        expected = np.round(np.asarray(picture) / 257.0)
    listing = folder.scan(str(tmp_path))
    assert listing.classes == ("bright", "dark")
    images, labels = folder.load(listing.train, 12, train=False)
    np.testing.assert_array_equal(images[labels == 1][0, :, :, 0], expected)  # same size: no resampling
    assert images[labels == 1].mean() == pytest.approx(12000 / 257, abs=3)
    assert images[labels == 0].mean() == pytest.approx(52000 / 257, abs=3)
    _, std = folder.channel_statistics(images, seed=0)
    assert min(std) > 0.1  # saturated to 255 everywhere, it was 0.001
    # Floating-point pixels (a TIFF under a .png name: Pillow reads the content) have no range.
    Image.fromarray(rng.random((12, 12)).astype(np.float32)).save(tmp_path / "float.png", format="TIFF")
    with pytest.raises(DataError, match=r"cannot read image .*float.png: floating-point pixels \(mode F\)"):
        folder.decode(str(tmp_path / "float.png"), 12, 12)


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` pixels (1-bit greyscale) with a tiny body:
    Pillow reads the size, and refuses it, before decoding anything."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def test_hidden_entries_are_not_classes_or_images_and_a_huge_image_is_one_line(tmp_path):
    from PIL import Image

    from keras_ffl.data import folder
    from keras_ffl.errors import DataError

    root = write_folder(tmp_path / "shapes", per_class=(2, 1))
    for split in ("train", "test"):
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.new("RGB", (8, 8)).save(hidden / "copy.png")
        (root / split / "circle" / "._circle_0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS metadata
    listing = folder.scan(str(root))
    assert listing.classes == CLASSES
    assert not any(os.path.basename(path).startswith(".") for path, _ in listing.train + listing.test)
    png_header_only(tmp_path / "huge.png", 14000, 14000)  # 196 megapixels
    with pytest.raises(DataError) as error:
        folder.decode(str(tmp_path / "huge.png"), 32, 32)
    assert len(str(error.value).splitlines()) == 1
    assert "cannot read image" in str(error.value) and "196000000 pixels" in str(error.value)


def test_evaluate_and_zoo_evaluate_refuse_a_folder_whose_classes_changed(folder_run, tmp_path):
    import shutil

    from keras_ffl import zoo
    from keras_ffl.evaluate import evaluate

    root, model_dir, _ = folder_run
    renamed, added = tmp_path / "renamed", tmp_path / "added"
    shutil.copytree(root, renamed)
    shutil.copytree(root, added)
    for split in ("train", "test"):
        (renamed / split / "square").rename(renamed / split / "box")
        shutil.copytree(root / split / "circle", added / split / "disc")
    result = run("-m", "keras_ffl.evaluate", f"--model_dir={model_dir}", f"--data_dir={renamed}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "has other class folders than the run was trained on (extra box; missing square)" in lines[0]
    with pytest.raises(ConfigError, match=r"other class folders than the run was trained on \(extra disc\): it "
                                          "needs exactly circle, square, stripes"):
        evaluate(str(model_dir), data_dir=str(added))
    manifest = tmp_path / "zoo" / "manifest.json"
    zoo.publish(str(model_dir), "shapes", manifest_path=str(manifest))
    for folder in (renamed, added):
        with pytest.raises(ConfigError, match="other class folders than the run was trained on"):
            zoo.evaluate("shapes", data_dir=str(folder), manifest=zoo.load_manifest(str(manifest)),
                         cache=str(tmp_path / "cache"))
    rows, _, _ = zoo.evaluate("shapes", data_dir=str(root), manifest=zoo.load_manifest(str(manifest)),
                              cache=str(tmp_path / "cache"))
    assert set(rows) >= {"net0", "fused"}
