"""Pretrained models by name: list, download (sha256-checked, cached), load, evaluate, publish.

    python -m keras_ffl.zoo list
    python -m keras_ffl.zoo download --name=ffl_resnet8x2_fashion_mnist
    python -m keras_ffl.zoo evaluate --name=ffl_resnet8x2_fashion_mnist
    python -m keras_ffl.zoo publish --model_dir=runs/quickstart_ffl --name=... --flagfile=zoo/...

The manifest (``zoo/manifest.json``) is data: one entry per model with its recipe (flagfile
and full config), the parts it can give, preprocessing, the weights' URL, sha256 and size,
and the metrics measured when it was published.  Weight URLs are relative to a base URL:
``--base_url``, else ``$KERAS_FFL_ZOO_URL``, else the manifest's ``base_url`` (relative to the
manifest's folder, so a clone serves its own committed weights).  Files are cached under
``$KERAS_FFL_CACHE`` (default ``~/.keras/keras_ffl_zoo``), checked against their sha256 and
size, and used offline once cached.  Downloads stream through urllib with connect and read
timeouts (``--timeout``) and stop as soon as more than the manifest's size arrives (Keras's
``get_file`` has neither).  A download that fails, is truncated, padded or has the wrong hash,
or is interrupted (Ctrl-C, SIGTERM), is deleted before the error is raised.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

from absl import flags

from keras_ffl.cli import run_main
from keras_ffl.config import Config, ConfigError
from keras_ffl.command_line import parse_argv, parse_command
from keras_ffl.files import atomic_write_text

from keras_ffl.paths import zoo_dir

DEFAULT_MANIFEST = os.path.join(zoo_dir(), "manifest.json")
ENV_BASE_URL = "KERAS_FFL_ZOO_URL"
ENV_CACHE = "KERAS_FFL_CACHE"
MANIFEST_FORMAT = 1


class ZooError(ConfigError):
    """A zoo request that cannot be served: unknown name, no weights, failed or bad download."""


# ---------------------------------------------------------------------- manifest
def load_manifest(path=None):
    path = path or DEFAULT_MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ZooError(f"no zoo manifest at {path}") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"zoo manifest {path} is not valid JSON ({e})") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("models"), dict):
        raise ZooError(f"zoo manifest {path} is not a keras_ffl manifest (format {MANIFEST_FORMAT})")
    manifest["_path"] = os.path.abspath(path)
    return manifest


def get_entry(name, manifest):
    if name not in manifest["models"]:
        raise ZooError(f"no model '{name}' in the zoo: choose from {', '.join(sorted(manifest['models']))}")
    return manifest["models"][name]


def entry_config(entry):
    """The entry's Config, on the backend this process uses (the recorded one is where it was
    trained: the weights are the same on every backend)."""
    return Config.from_dict({**entry["config"], "backend": ""}).validated(check_data=False)


def resolve_base_url(manifest, base_url=None):
    base = base_url or os.environ.get(ENV_BASE_URL) or manifest.get("base_url", "")
    if not urllib.parse.urlsplit(base).scheme:  # a path: relative to the manifest's folder
        folder = os.path.join(os.path.dirname(manifest["_path"]), base)
        base = "file://" + urllib.request.pathname2url(os.path.abspath(folder))
    return base if base.endswith("/") else base + "/"


def cache_dir(override=None):
    return override or os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".keras", "keras_ffl_zoo")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- download
def bundled(name, manifest, base_url=None):
    """The path of ``name``'s weights where they lie on this machine: shipped with keras_ffl
    (beside the manifest, in a clone's zoo/ or a wheel's zoo_files/), or in a folder that
    ``--base_url`` / $KERAS_FFL_ZOO_URL names as a path; checked against their sha256; None where
    the source is a URL or holds no such file.  Used in place: no copy."""
    weights = get_entry(name, manifest).get("weights")
    base = base_url or os.environ.get(ENV_BASE_URL) or manifest.get("base_url", "")
    if not weights or urllib.parse.urlsplit(base).scheme:
        return None
    url = urllib.parse.urljoin(resolve_base_url(manifest, base), weights["url"])
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) != weights["size"] or sha256_of(path) != weights["sha256"]:
        remedy = ("reinstall keras_ffl, or pass --base_url to download them" if base == manifest.get("base_url", "")
                  else "replace that file, or pass another --base_url")
        raise ZooError(f"the weights {path} do not match their sha256 in the manifest: {remedy}")
    return path


def download(name, manifest=None, base_url=None, cache=None, timeout=None):
    """Returns the local path of ``name``'s weights, downloading and checking them if needed
    (``timeout``: seconds to connect and for each read, default ``DEFAULT_TIMEOUT``)."""
    manifest = manifest or load_manifest()
    entry = get_entry(name, manifest)
    weights = entry.get("weights")
    if not weights:
        raise ZooError(f"'{name}' has no published weights yet: train it with --flagfile={entry.get('flagfile')}")
    local = bundled(name, manifest, base_url)
    if local:
        return local
    from keras_ffl.run_dir import check_can_create, remove_dead_partials

    folder = cache_dir(cache)
    try:  # one line here, not a traceback (or, through Keras's get_file, a silent /tmp/.keras)
        check_can_create(folder, "the zoo cache (--cache_dir or $KERAS_FFL_CACHE)")
    except ConfigError as e:
        raise ZooError(str(e)) from None
    os.makedirs(folder, exist_ok=True)
    remove_dead_partials(folder, r".+\.partial(?P<pid>\d+)")  # what killed downloads left
    final = os.path.join(folder, os.path.basename(weights["url"]))
    if os.path.exists(final):
        if os.path.getsize(final) == weights["size"] and sha256_of(final) == weights["sha256"]:
            return final
        os.remove(final)  # stale or tampered: never used, fetched again below
    url = urllib.parse.urljoin(resolve_base_url(manifest, base_url), weights["url"])
    partial_path = os.path.join(folder, f"{os.path.basename(final)}.partial{os.getpid()}")
    try:
        with terminate_as_exit():  # SIGTERM unwinds through here too, so the partial file goes
            fetch(url, partial_path, weights["size"], DEFAULT_TIMEOUT if timeout is None else timeout)
            size = os.path.getsize(partial_path)
            if size != weights["size"]:
                raise ZooError(f"download of {url} is truncated or padded: {size} bytes, expected {weights['size']}")
            if sha256_of(partial_path) != weights["sha256"]:
                raise ZooError(f"download of {url} does not match its sha256 {weights['sha256'][:12]}...: refused")
            os.replace(partial_path, final)
    except BaseException as e:
        if os.path.exists(partial_path):
            os.remove(partial_path)
        if isinstance(e, (KeyboardInterrupt, SystemExit, ZooError)):
            raise
        if isinstance(e, TimeoutError) or "timed out" in str(e):
            raise ZooError(f"cannot download {url}: no answer within {timeout or DEFAULT_TIMEOUT:g} s (--timeout)") \
                from None
        reason = getattr(e, "reason", None) or e
        raise ZooError(f"cannot download {url}: {str(reason).splitlines()[0] if str(reason) else type(e).__name__}") \
            from None
    return final


#: Seconds a download may wait to connect, and then for each block (``--timeout``).
DEFAULT_TIMEOUT = 30.0


def fetch(url, path, size, timeout):
    """Streams ``url`` into ``path``, ``timeout`` seconds at most for the connection and for each
    read; refuses (ZooError) as soon as more than ``size`` bytes arrive, whatever the server's
    Content-Length says or omits, so a bad mirror never fills the disk."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as f:
        received = 0
        while block := response.read(1 << 16):
            received += len(block)
            if received > size:
                raise ZooError(f"download of {url} is truncated or padded: more than the {size} bytes expected; "
                               "stopped reading")
            f.write(block)


@contextlib.contextmanager
def terminate_as_exit():
    """Within: SIGTERM raises SystemExit(143) (in the main thread), so cleanups run as on Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -------------------------------------------------------------------------- load
def load_method_model(name, manifest=None, base_url=None, cache=None, timeout=None):
    """The whole method model of ``name`` (every part), weights loaded; returns ``(model, config)``."""
    from keras_ffl.build import build_model

    manifest = manifest or load_manifest()
    entry = get_entry(name, manifest)
    path = download(name, manifest, base_url, cache, timeout)
    config = entry_config(entry)
    spec = config.dataset_spec
    model = build_model(config, spec.num_classes, spec.image_shape)
    try:
        model.load_weights(path)
    except Exception as e:
        raise ZooError(f"weights of '{name}' do not fit its config: {str(e).splitlines()[0]}") from None
    return model, config


def load(name, part=None, raw_pixels=False, manifest=None, base_url=None, cache=None):
    """A ready ``keras.Model`` for one part of zoo model ``name`` (default: its first listed
    part): standardised images -> logits, or raw [0, 255] pixels with ``raw_pixels=True``."""
    from keras_ffl.build import part_model

    manifest = manifest or load_manifest()
    entry = get_entry(name, manifest)
    part = part or entry["parts"][0]
    model, config = load_method_model(name, manifest, base_url, cache)
    return part_model(model, config, part, raw_pixels=raw_pixels)


def evaluate(name, part=None, data_dir="", manifest=None, base_url=None, cache=None, timeout=None):
    """Evaluates every part on the entry's test split; returns ``(rows, entry, test_size)``."""
    import dataclasses

    from keras_ffl.build import compile_model
    from keras_ffl.config import check_data_dir, check_download_possible
    from keras_ffl.data import load_data
    from keras_ffl.report import summarize

    manifest = manifest or load_manifest()
    entry = get_entry(name, manifest)
    model, config = load_method_model(name, manifest, base_url, cache, timeout)
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir)
    check_data_dir(config.dataset, config.resolved_data_dir)
    check_download_possible(config)
    compile_model(model, config, 1)
    data = load_data(config, splits=("test",))
    metrics = model.evaluate(data.test, return_dict=True, verbose=0)
    return summarize(metrics, model.part_names), entry, data.test_size


# ----------------------------------------------------------------------- publish
def publish(model_dir, name, flagfile="", description="", manifest_path=None, weights_dir=None):
    """Packages a finished run: inference-only weights (no optimiser state) into the zoo's
    weights folder and an entry with their sha256, size and the run's measured metrics."""
    from keras_ffl import run_dir
    from keras_ffl.build import build_model, load_run
    from keras_ffl.callbacks import save_weights_atomically

    manifest_path = manifest_path or DEFAULT_MANIFEST
    manifest = load_manifest(manifest_path) if os.path.exists(manifest_path) else {
        "format": MANIFEST_FORMAT, "base_url": "", "models": {}, "_path": os.path.abspath(manifest_path)}
    saved = Config.load(run_dir.path(model_dir, run_dir.CONFIG))
    if not saved.declaration.STANDALONE:
        raise ZooError(f"--method={saved.method} runs rebuild through the finished run they learnt from: export the "
                       "student with 'python -m keras_ffl.export --model_dir=...' instead")
    report_path = run_dir.path(model_dir, run_dir.REPORT)
    if not os.path.exists(report_path):
        raise ZooError(f"{model_dir} has no report.json: only finished runs can be published")
    with open(report_path) as f:
        report = json.load(f)
    trained, config = load_run(model_dir)
    spec = config.dataset_spec
    inference = build_model(config, spec.num_classes, spec.image_shape)  # uncompiled: no optimiser state
    inference.set_weights(trained.get_weights())
    # Weights sit beside the manifest, so a clone (or a mirror of the zoo folder) serves them.
    zoo_folder = os.path.dirname(manifest["_path"])
    weights_dir = weights_dir or os.path.join(zoo_folder, "weights")
    filename = f"{name}.weights.h5"
    path = os.path.join(weights_dir, filename)
    save_weights_atomically(inference, path)
    metrics = {
        "top1": {row: round(v["top1"], 2) for row, v in report["results"].items()},
        "test_examples": report["test_examples"],
        "how": f"keras_ffl.train's final evaluation of this run on the first {report['test_examples']} "
        f"{config.dataset} test images (single run, seed {config.seed}); "
        f"'python -m keras_ffl.zoo evaluate --name={name}' recomputes it",
    }
    weights = {"url": os.path.relpath(path, zoo_folder).replace(os.sep, "/"), "sha256": sha256_of(path),
               "size": os.path.getsize(path)}
    manifest["models"][name] = make_entry(inference, config, flagfile, description, weights, metrics)
    write_manifest(manifest)
    return manifest["models"][name]


def add_recipe(name, flagfile, description="", manifest_path=None):
    """An entry with no weights yet: the recipe (flagfile and config) and the model's parts."""
    from keras_ffl.build import build_model
    from keras_ffl.command_line import config_from_flags

    manifest = load_manifest(manifest_path)
    config = config_from_flags(parse_argv(["zoo", f"--flagfile={flagfile}"])).validated(check_data=False)
    spec = config.dataset_spec
    model = build_model(config, spec.num_classes, spec.image_shape)
    metrics = {"note": "no published weights yet: train with the flagfile, then publish the run"}
    manifest["models"][name] = make_entry(model, config, flagfile, description, None, metrics)
    write_manifest(manifest)
    return manifest["models"][name]


def make_entry(model, config, flagfile, description, weights, metrics):
    spec = config.dataset_spec
    return {
        "description": description or f"{config.method.upper()} {'/'.join(config.branch_backbones)} on {config.dataset}",
        "method": config.method,
        "backbones": config.branch_backbones,
        "flagfile": flagfile,
        "dataset": config.dataset,
        "num_classes": spec.num_classes,
        "class_names": config.labels,
        "image_shape": list(spec.image_shape),
        "preprocessing": preprocessing_record(*config.normalization),
        "parts": list(model.part_names),
        "parameters": {p: count_part_parameters(model, config, p) for p in model.part_names},
        "weights": weights,
        "metrics": metrics,
        "training": training_summary(config),
        "config": dataclasses.replace(config, model_dir="", options=config.options.without_paths()).to_dict(),
    }


def training_summary(config):
    """What a user asks of pretrained weights first: on how many images, for how long, how."""
    from keras_ffl.build import train_size_of

    c = config
    schedule = (f"lr {c.lr:g}, x{c.lr_gamma:g} at epochs {','.join(map(str, c.lr_milestones))}"
                if c.lr_schedule == "step" else f"lr {c.lr:g}, cosine per epoch")
    optimizer = f"SGD momentum {c.momentum:g}{' Nesterov' if c.nesterov else ''}, weight decay {c.weight_decay:g}"
    summary = {"train_images": train_size_of(c), "epochs": c.epochs, "batch_size": c.batch_size,
               "schedule": schedule, "optimizer": optimizer, "seed": c.seed}
    summary.update(c.options.training_summary(c))
    return summary


def preprocessing_record(mean, std):
    return {
        "input": "float32 pixels in [0, 255], NHWC",
        "formula": "(pixels / 255 - mean) / std, per channel",
        "mean": list(mean),
        "std": list(std),
    }


def count_part_parameters(model, config, part):
    from keras_ffl.build import part_model

    return int(part_model(model, config, part).count_params())


def write_manifest(manifest):
    data = {k: v for k, v in manifest.items() if k != "_path"}
    atomic_write_text(manifest["_path"], json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- CLI
COMMANDS = ("list", "download", "evaluate", "publish", "recipe")


def define_flags(flag_values):
    flags.DEFINE_string("name", "", "Zoo model name (see 'list').", flag_values=flag_values)
    flags.DEFINE_string("part", "", "Part to load (net0, net1, fused, ensemble...; default: all for evaluate).",
                        flag_values=flag_values)
    flags.DEFINE_string("base_url", "", f"Where weight files are served from (default ${ENV_BASE_URL}, else the "
                        "manifest's base_url).", flag_values=flag_values)
    flags.DEFINE_string("cache_dir", "", f"Download cache (default ${ENV_CACHE} or ~/.keras/keras_ffl_zoo).",
                        flag_values=flag_values)
    flags.DEFINE_string("manifest", "", "Manifest file (default zoo/manifest.json).", flag_values=flag_values)
    flags.DEFINE_float("timeout", DEFAULT_TIMEOUT, "download: seconds to wait for the server to connect, and then "
                       "for each block.", flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "evaluate: data location override.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "", "publish: the finished run to package.", flag_values=flag_values)
    flags.DEFINE_string("flagfile_recipe", "", "publish: the flagfile that trained it (recorded in the entry).",
                        flag_values=flag_values)
    flags.DEFINE_string("description", "", "publish: one line describing the model.", flag_values=flag_values)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)

    def body():
        command, fv = parse_command(argv, COMMANDS, "zoo", define_flags)
        if not (fv.timeout > 0 and fv.timeout != float("inf")):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {fv.timeout}")
        manifest = load_manifest(fv.manifest or None) if command not in ("publish", "recipe") else None
        if command == "list":
            print("| name | method | networks | dataset | parts | weights | published top-1 (%) |")
            print("|---|---|---|---|---|---|---|")
            for name, e in sorted(manifest["models"].items()):
                top1 = ", ".join(f"{p} {v:.2f}" for p, v in e.get("metrics", {}).get("top1", {}).items())
                size = f"{e['weights']['size'] / 1e6:.2f} MB" if e.get("weights") else "not yet (recipe only)"
                print(f"| {name} | {e['method']} | {' + '.join(e['backbones'])} | {e['dataset']} | "
                      f"{', '.join(e['parts'])} | {size} | {top1 or '-'} |")
            return 0
        if command in ("publish", "evaluate"):
            from keras_ffl import backend

            backend.import_quietly(backend.resolve())
        if command == "publish":
            if not fv.model_dir or not fv.name:
                raise ConfigError("publish needs --model_dir and --name")
            entry = publish(fv.model_dir, fv.name, fv.flagfile_recipe, fv.description, fv.manifest or None)
            print(f"published {fv.name}: {entry['weights']['url']} ({entry['weights']['size']:,} bytes, "
                  f"sha256 {entry['weights']['sha256']})")
            return 0
        if command == "recipe":
            if not fv.flagfile_recipe or not fv.name:
                raise ConfigError("recipe needs --name and --flagfile_recipe")
            add_recipe(fv.name, fv.flagfile_recipe, fv.description, fv.manifest or None)
            print(f"added recipe {fv.name} ({fv.flagfile_recipe}), no weights yet")
            return 0
        if not fv.name:
            raise ConfigError(f"{command} needs --name (see 'python -m keras_ffl.zoo list')")
        if command == "download":
            print(download(fv.name, manifest, fv.base_url or None, fv.cache_dir or None, fv.timeout))
            return 0
        local = bundled(fv.name, manifest, fv.base_url or None)
        if local:
            print(f"weights: bundled with keras_ffl, sha256 checked ({local})", flush=True)
        from keras_ffl.report import format_table

        rows, entry, test_size = evaluate(fv.name, data_dir=fv.data_dir, manifest=manifest,
                                          base_url=fv.base_url or None, cache=fv.cache_dir or None,
                                          timeout=fv.timeout)
        print(format_table(rows, f"{fv.name} on {entry['dataset']} ({test_size} test images)"))
        published = entry.get("metrics", {}).get("top1", {})
        worst = max((abs(rows[p]["top1"] - v) for p, v in published.items() if p in rows), default=0.0)
        print(f"published top-1: {', '.join(f'{p} {v:.2f}' for p, v in published.items())}; "
              f"largest difference {worst:.2f} points")
        return 0

    return run_main(body, keras_now=False)  # list, recipe and download need no Keras


if __name__ == "__main__":
    sys.exit(main())
