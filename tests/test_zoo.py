"""Zoo: publish a finished run, serve it from a loopback HTTP server, download it with its
sha256, load it cached and offline; refuse tampered, truncated and unreachable downloads
and leave the cache clean; the committed manifest is well formed."""

import functools
import http.server
import os
import threading

import numpy as np
import pytest

from helpers import random_batch, tiny_config
from keras_ffl import zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """A loopback HTTP server on a free port, serving one folder."""

    def __init__(self, folder):
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.requests = 0
        self.httpd.owner = self
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.owner.requests += 1
        return super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A finished tiny run published into a temporary manifest and weights folder."""
    from keras_ffl.train import train

    root = tmp_path_factory.mktemp("zoo")
    config = tiny_config(method="ffl", epochs=1, validation_freq=0, model_dir=str(root / "run"))
    report = train(config)
    manifest_path = root / "served" / "manifest.json"
    entry = zoo.publish(config.model_dir, "tiny_ffl", flagfile="(test)", manifest_path=str(manifest_path))
    return root / "served", manifest_path, entry, report, config


def cached_files(cache):
    return sorted(os.listdir(cache)) if os.path.exists(cache) else []


def test_publish_writes_weights_hash_and_metrics(published):
    served, manifest_path, entry, report, config = published
    weights = served / entry["weights"]["url"]
    assert weights.exists() and entry["weights"]["size"] == weights.stat().st_size
    assert entry["weights"]["sha256"] == zoo.sha256_of(str(weights))
    assert entry["metrics"]["top1"]["fused"] == round(report["results"]["fused"]["top1"], 2)
    assert entry["parts"] == ["net0", "net1", "ensemble", "fused"]
    # A sub-network is the shared trunk plus one branch: less than the whole model.
    assert entry["parameters"]["net0"] < entry["parameters"]["fused"]
    manifest = zoo.load_manifest(str(manifest_path))
    assert manifest["models"]["tiny_ffl"]["weights"] == entry["weights"]


def test_download_from_loopback_then_cached_then_offline(published, tmp_path):
    served, manifest_path, entry, report, config = published
    manifest = zoo.load_manifest(str(manifest_path))
    server = Server(served)
    cache = str(tmp_path / "cache")
    try:
        path = zoo.download("tiny_ffl", manifest, base_url=server.url, cache=cache)
        assert server.requests == 1 and zoo.sha256_of(path) == entry["weights"]["sha256"]
        zoo.download("tiny_ffl", manifest, base_url=server.url, cache=cache)
        assert server.requests == 1  # served from the cache
    finally:
        server.stop()
    # Offline: the server is gone, the cached file is enough to load and predict.
    model = zoo.load("tiny_ffl", part="fused", manifest=manifest, base_url=server.url, cache=cache)
    method_model, _ = zoo.load_method_model("tiny_ffl", manifest, base_url=server.url, cache=cache)
    x, _ = random_batch(4)
    np.testing.assert_allclose(model(x).numpy(), method_model(x)["fused"].numpy(), rtol=1e-5, atol=1e-6)
    assert cached_files(cache) == [os.path.basename(path)]


def test_loaded_model_reproduces_the_published_accuracy(published):
    served, manifest_path, entry, report, config = published
    rows, _, _ = zoo.evaluate("tiny_ffl", manifest=zoo.load_manifest(str(manifest_path)),
                              cache=str(served.parent / "cache_eval"))
    for part, value in entry["metrics"]["top1"].items():
        assert rows[part]["top1"] == pytest.approx(value, abs=0.01)


def tampered_copy(served, tmp_path, transform):
    folder = tmp_path / "bad"
    (folder / "weights").mkdir(parents=True)
    data = (served / "weights" / "tiny_ffl.weights.h5").read_bytes()
    (folder / "weights" / "tiny_ffl.weights.h5").write_bytes(transform(data))
    return folder


@pytest.mark.parametrize(
    "transform,message",
    [(lambda d: d[: len(d) // 2], "truncated"),
     (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "does not match its sha256")],
    ids=["truncated", "tampered"],
)
def test_bad_downloads_are_refused_and_leave_the_cache_clean(published, tmp_path, transform, message):
    served, manifest_path, entry, report, config = published
    server = Server(tampered_copy(served, tmp_path, transform))
    cache = str(tmp_path / "cache")
    try:
        with pytest.raises(zoo.ZooError, match=message):
            zoo.download("tiny_ffl", zoo.load_manifest(str(manifest_path)), base_url=server.url, cache=cache)
    finally:
        server.stop()
    assert cached_files(cache) == []


def test_unreachable_server_is_a_clear_error(published, tmp_path):
    served, manifest_path, entry, report, config = published
    server = Server(served)
    url = server.url
    server.stop()  # nothing listens on that port any more
    cache = str(tmp_path / "cache")
    with pytest.raises(zoo.ZooError, match="cannot download http://127.0.0.1"):
        zoo.download("tiny_ffl", zoo.load_manifest(str(manifest_path)), base_url=url, cache=cache)
    assert cached_files(cache) == []


def test_a_corrupted_cached_file_is_replaced(published, tmp_path):
    served, manifest_path, entry, report, config = published
    manifest = zoo.load_manifest(str(manifest_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny_ffl.weights.h5").write_bytes(b"not weights")
    server = Server(served)
    try:
        path = zoo.download("tiny_ffl", manifest, base_url=server.url, cache=str(cache))
    finally:
        server.stop()
    assert zoo.sha256_of(path) == entry["weights"]["sha256"] and server.requests == 1


def test_unknown_names_and_recipe_only_entries(published):
    manifest = zoo.load_manifest(os.path.join(REPO, "zoo", "manifest.json"))
    with pytest.raises(zoo.ZooError, match="no model 'nope' in the zoo"):
        zoo.download("nope", manifest)
    recipe_only = [n for n, e in manifest["models"].items() if not e.get("weights")]
    assert recipe_only, "the CIFAR-100 recipes are listed without weights"
    with pytest.raises(zoo.ZooError, match="no published weights yet"):
        zoo.download(recipe_only[0], manifest)


def test_committed_manifest_is_consistent():
    from keras_ffl.config import Config

    manifest = zoo.load_manifest(os.path.join(REPO, "zoo", "manifest.json"))
    for name, entry in manifest["models"].items():
        config = Config.from_dict(entry["config"]).validated(check_data=False)
        assert config.dataset == entry["dataset"] and config.branch_backbones == entry["backbones"], name
        assert os.path.exists(os.path.join(REPO, entry["flagfile"])), name
        if entry.get("weights"):
            path = os.path.join(REPO, "zoo", entry["weights"]["url"])
            assert os.path.getsize(path) == entry["weights"]["size"] < 5_000_000, name
            assert zoo.sha256_of(path) == entry["weights"]["sha256"], name
            assert set(entry["metrics"]["top1"]) >= set(entry["parts"]), name
            if entry["dataset"] == "fashion_mnist":  # converged: every image, a schedule that ends
                assert entry["training"]["train_images"] == 60000 and entry["training"]["epochs"] >= 15, name
                assert max(entry["metrics"]["top1"].values()) >= 92.0, name
