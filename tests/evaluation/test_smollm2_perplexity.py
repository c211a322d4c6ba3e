"""Perplexity of SmolLM2 by sliding window, ours against transformers on the same windows."""

import pytest
import torch

from arlm.config import DataConfig
from arlm.evaluation.perplexity import sliding_window, sliding_windows
from arlm.evaluation.run import corpus_text, eval_command
from tests.helpers import SHAKESPEARE

pytestmark = [pytest.mark.real_model, pytest.mark.hf]
CONTEXT, STRIDE, CHARS = 256, 128, 5000


@torch.no_grad()
def _transformers_nll(model, ids):
    total, count = 0.0, 0
    for begin, end, skip in sliding_windows(ids.numel(), CONTEXT, STRIDE):
        logits = model(ids[begin:end][None]).logits[0, skip:]  # (scored, V)
        targets = ids[begin + 1 + skip : end + 1]
        total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
        count += targets.numel()
    return total / count, count


@pytest.mark.parametrize("source", ["builtin", str(SHAKESPEARE)])
def test_perplexity_matches_transformers_on_the_same_windows(smollm2, hf_smollm2, source):
    text = corpus_text(source, DataConfig(), max_chars=CHARS)
    ids = torch.tensor(smollm2.tokenizer.encode(text))
    ours = sliding_window(smollm2.model, ids, context=CONTEXT, stride=STRIDE)
    theirs, count = _transformers_nll(hf_smollm2, ids)
    assert ours.tokens == count == ids.numel() - 1
    assert abs(ours.perplexity / torch.tensor(theirs).exp().item() - 1) < 0.005
    assert 1.5 < ours.perplexity < 200


def test_eval_command_on_a_file(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text(SHAKESPEARE.read_text()[:1500])
    lines = []
    result = eval_command("smollm2", file=str(sample), context=128, stride=64, device="cpu", log=lines.append)
    assert "window 128, stride 64" in lines[0] and result.bits_per_byte > 0
