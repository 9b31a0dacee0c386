"""Zoo: publish a finished run, serve it from a loopback HTTP server, download it with its
sha256, load it cached and offline; refuse tampered, truncated and unreachable downloads
and leave the cache clean; the committed manifest is well formed."""

import functools
import json
import http.server
import os
import signal
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


def test_weights_on_this_machine_are_used_in_place_and_checked(published, tmp_path):
    """Weights beside the manifest (shipped with keras_ffl), or in a folder ``--base_url`` names
    as a path, are read where they are: no copy in the cache; a tampered one is refused."""
    served, manifest_path, entry, report, config = published
    manifest = zoo.load_manifest(str(manifest_path))
    cache = tmp_path / "cache"
    beside = zoo.download("tiny_ffl", manifest, cache=str(cache))
    assert os.path.samefile(beside, served / entry["weights"]["url"])
    mirror = tampered_copy(served, tmp_path, lambda d: d)
    assert os.path.samefile(zoo.download("tiny_ffl", manifest, base_url=str(mirror), cache=str(cache)),
                            mirror / entry["weights"]["url"])
    assert cached_files(cache) == []
    bad = tampered_copy(served, tmp_path / "tampered", lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    with pytest.raises(zoo.ZooError, match="do not match their sha256 in the manifest: replace that file"):
        zoo.download("tiny_ffl", manifest, base_url=str(bad), cache=str(cache))
    assert cached_files(cache) == []


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


def test_a_cache_dir_or_export_folder_that_cannot_be_written_is_one_line_and_nothing_goes_elsewhere(
        published, tmp_path, monkeypatch):
    import errno
    import subprocess
    import sys
    import tempfile

    from keras_ffl.config import ConfigError
    from keras_ffl.export import check_request

    served, manifest_path, entry, report, config = published
    manifest = zoo.load_manifest(str(manifest_path))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(zoo.ZooError, match=r"the zoo cache .* is not writable: .*a_file is not a directory"):
        zoo.download("tiny_ffl", manifest, base_url=served.as_uri() + "/", cache=str(a_file / "cache"))
    with pytest.raises(zoo.ZooError, match=r"the zoo cache .* is not writable: .*a_file is not a directory"):
        zoo.download("tiny_ffl", manifest, base_url=served.as_uri() + "/", cache=str(a_file))
    exported = subprocess.run([sys.executable, "-m", "keras_ffl.export", f"--model_dir={config.model_dir}",
                               f"--output_dir={a_file / 'export'}"], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=REPO))
    lines = exported.stderr.strip().splitlines()
    assert exported.returncode == 2 and len(lines) == 1 and "is not writable" in lines[0], exported.stderr[-2000:]

    # A read-only folder (root writes through permissions: the write itself fails here).
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(str(read_only)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(zoo.ZooError, match="is not writable: Read-only file system"):
        zoo.download("tiny_ffl", manifest, base_url=served.as_uri() + "/", cache=str(read_only))
    assert os.listdir(read_only) == [] and not (tmp_path / "home").exists()
    with pytest.raises(ConfigError, match="is not writable: Read-only file system"):
        check_request("", config.model_dir, ["onnx"], str(read_only / "export"), False)


def interruptible():
    """Gives a child Ctrl-C's default action, as a terminal's foreground job has: a suite started
    in the background of a non-interactive shell inherits SIGINT ignored (POSIX), and Python
    then leaves it ignored in every process it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class EndlessHandler(http.server.BaseHTTPRequestHandler):
    """A mirror that answers with no Content-Length and sends far past every size the tests
    allow, at about 6 MB/s: a signal sent once the first bytes are on disk always lands
    mid-download (at loopback speed a loaded machine let the child finish first), and a client
    that failed to stop writes a few hundred MB before the test gives up, not the whole disk.
    After 1 GiB it hangs up."""

    LIMIT = 1 << 30

    def do_GET(self):
        import time

        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(self.LIMIT // 65536):
                self.wfile.write(b"\0" * 65536)
                time.sleep(0.01)
        except OSError:  # the client hung up
            pass

    def log_message(self, *args):
        pass


def test_downloads_have_timeouts_a_size_cap_and_leave_no_partial_file_on_sigterm_or_ctrl_c(published, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    served, manifest_path, entry, report, config = published
    manifest = zoo.load_manifest(str(manifest_path))
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endless = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessHandler)
    threading.Thread(target=endless.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    try:
        with pytest.raises(zoo.ZooError, match=r"cannot download http://127.0.0.1:\d+/weights/tiny_ffl.weights.h5: "
                                                r"no answer within 0.5 s \(--timeout\)"):
            zoo.download("tiny_ffl", manifest, base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/",
                         cache=str(cache), timeout=0.5)
        with pytest.raises(zoo.ZooError, match=f"more than the {entry['weights']['size']} bytes expected; stopped"):
            zoo.download("tiny_ffl", manifest, base_url=f"http://127.0.0.1:{endless.server_address[1]}/",
                         cache=str(cache))
        assert cached_files(cache) == []
        # SIGTERM in the middle of a download (the endless mirror, a cap the test never reaches).
        code = ("import sys; from keras_ffl import zoo; m = zoo.load_manifest(sys.argv[1]); "
                "m['models']['tiny_ffl']['weights']['size'] = 10**12; "
                "zoo.download('tiny_ffl', m, base_url=sys.argv[2], cache=sys.argv[3])")
        child = subprocess.Popen([sys.executable, "-c", code, str(manifest_path),
                                  f"http://127.0.0.1:{endless.server_address[1]}/", str(cache)],
                                 env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not [f for f in cached_files(cache) if os.path.getsize(cache / f) > 0]:  # it is writing
            assert child.poll() is None and time.time() < deadline, child.stderr.read()[-2000:]
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        assert cached_files(cache) == []
        # Ctrl-C on the command: the partial file goes, one line, exit 130, no traceback.
        endless_manifest = json.loads(manifest_path.read_text())
        endless_manifest["models"]["tiny_ffl"]["weights"]["size"] = 10**12
        (tmp_path / "endless.json").write_text(json.dumps(endless_manifest))
        child = subprocess.Popen([sys.executable, "-m", "keras_ffl.zoo", "download", "--name=tiny_ffl",
                                  f"--manifest={tmp_path / 'endless.json'}", f"--cache_dir={cache}",
                                  f"--base_url=http://127.0.0.1:{endless.server_address[1]}/"],
                                 env=dict(os.environ, PYTHONPATH=REPO, PYTHONFAULTHANDLER="1"), stderr=subprocess.PIPE,
                                 text=True, preexec_fn=interruptible)
        deadline = time.time() + 120
        while not [f for f in cached_files(cache) if os.path.getsize(cache / f) > 0]:
            assert child.poll() is None and time.time() < deadline, child.stderr.read()[-2000:]
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        try:
            code = child.wait(timeout=60)
        except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
            child.send_signal(signal.SIGABRT)
            raise AssertionError(f"Ctrl-C did not stop the download: {child.communicate()[1][-4000:]}") from None
        assert code == 130
        assert child.stderr.read().strip().splitlines() == ["interrupted"]
        assert cached_files(cache) == []
    finally:
        silent.close()
        endless.shutdown()
        endless.server_close()
