"""Where keras_ffl's data files are, in a clone and in an installed wheel (no heavy imports)."""

import os

from keras_ffl.errors import ConfigError

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def zoo_dir():
    """The zoo folder: flagfiles, manifest.json, weights/.  ``keras_ffl/zoo_files`` in a wheel,
    the repository's top-level ``zoo/`` in a clone (or an editable install)."""
    for candidate in (os.path.join(PACKAGE, "zoo_files"), os.path.join(os.path.dirname(PACKAGE), "zoo")):
        if os.path.isfile(os.path.join(candidate, "manifest.json")):
            return candidate
    return os.path.join(PACKAGE, "zoo_files")


def zoo_flagfiles():
    """Names of the paper settings that ship with keras_ffl (``--flagfile=NAME``)."""
    folder = zoo_dir()
    return sorted(f[:-len(".flags")] for f in os.listdir(folder) if f.endswith(".flags")) if os.path.isdir(folder) else []


def resolve_flagfile(value, including_dir=""):
    """A flagfile path as given (absolute, relative to the working directory or to the file
    that includes it), else a zoo setting by name (``res32_cifar100``, ``zoo/res32_cifar100.flags``)."""
    candidates = [value]
    if including_dir and not os.path.isabs(value):
        candidates.append(os.path.join(including_dir, value))
    name = os.path.basename(value)
    candidates += [os.path.join(zoo_dir(), name), os.path.join(zoo_dir(), name + ".flags")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    import difflib

    known = zoo_flagfiles()
    stem = name[:-len(".flags")] if name.endswith(".flags") else name
    nearest = difflib.get_close_matches(stem, known, n=3, cutoff=0.4)
    hint = (f"the nearest zoo settings: {', '.join(nearest)}" if nearest else
            f"the zoo's {len(known)} settings are the .flags files in {zoo_dir()}" if known else "the zoo has none")
    raise ConfigError(f"--flagfile={value}: no such file, and no zoo setting of that name ({hint})")


def expand_flagfiles(argv, including_dir="", depth=0):
    """``argv`` with every ``--flagfile`` replaced by the flags it holds (recursively), so that
    flagfiles resolve by zoo name and nested ones relative to the file that includes them,
    from any working directory."""
    if depth > 20:
        raise ConfigError("--flagfile nesting is deeper than 20 files: a flagfile includes itself?")
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--flagfile", "-flagfile") and args:
            arg = f"--flagfile={args.pop(0)}"
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = resolve_flagfile(arg.split("=", 1)[1], including_dir)
            try:
                with open(path) as f:
                    lines = [line.strip() for line in f]
            except OSError as e:
                raise ConfigError(f"cannot read flagfile {path}: {e.strerror or e}") from None
            flags = [line for line in lines if line and not line.startswith(("#", "//"))]
            out += expand_flagfiles(flags, os.path.dirname(os.path.abspath(path)), depth + 1)
        else:
            out.append(arg)
    return out
