"""The README's "From Python" blocks run as written, in a fresh interpreter, and print what the verbs print."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


def _python_blocks() -> list[str]:
    """The ```python blocks of the README's "## From Python" section, in order."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_holds_the_blocks_this_file_runs():
    blocks = _python_blocks()
    assert len(blocks) == 2 and "generate(" in blocks[0] and "train_command(" in blocks[1]
    assert f'tok.encode("{PROMPT}")' in blocks[0] and "max_new_tokens=16" in blocks[0]


@pytest.mark.real_model
@pytest.mark.slow
def test_the_python_blocks_run_and_print_what_the_verbs_print(tmp_path):
    """Greedy from Python = `arlm generate` on the same settings; the chat answers; the perplexity and the trained
    run's are numbers; the run lands where the README says."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    out = []
    for block in _python_blocks():
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        out.append(done.stdout)
    flags = ["--dtype", "int4", "--max-new-tokens", "16", "--strategy", "greedy", "--prompt", PROMPT]
    cli = run_cli("generate", "smollm2", *flags)
    assert cli.returncode == 0, cli.stderr
    printed = cli.stdout  # the prompt, then its continuation
    assert printed.startswith(PROMPT)
    continuation = printed[len(PROMPT) :].removesuffix("\n")
    assert out[0].startswith(continuation + "\n")  # (the continuation may hold newlines)
    *_, perplexity = out[0].rstrip("\n").rsplit("\n", 1)
    reply = out[0][len(continuation) + 1 : -len(perplexity) - 1]
    assert reply.strip() and 1.0 < float(perplexity) < 50.0
    assert math.isfinite(float(out[1].strip().splitlines()[-1]))
    assert (tmp_path / "runs" / "quickstart").is_dir()
