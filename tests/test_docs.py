"""Every Python code block in README.md and BUILD.md runs as written, each in a fresh process in
an empty directory, so the documentation cannot drift from the library."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from helpers import assert_starts_quietly, user_env

DOCUMENTS = ("README.md", "BUILD.md")


def python_blocks():
    blocks = []
    for document in DOCUMENTS:
        text = open(os.path.join(REPO, document)).read()
        for match in re.finditer(r"^([ \t]*)```python\n(.*?)^\1```", text, flags=re.M | re.S):
            line = text[:match.start()].count("\n") + 1
            blocks.append(pytest.param(textwrap.dedent(match.group(2)), id=f"{document}:{line}"))
    return blocks


def test_the_documents_have_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs(code, tmp_path, fashion_mnist_dir):
    env = user_env(drop=("KERAS_BACKEND",), PYTHONPATH=REPO, KERAS_FFL_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    if "import_keras_quietly()" in code:  # the README's session: as quiet as the command line
        assert_starts_quietly(result)
