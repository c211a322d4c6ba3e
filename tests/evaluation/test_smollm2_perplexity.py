"""Perplexity of SmolLM2 by sliding window, ours against transformers on the same windows."""

import pytest
import torch

from arlm.commands.eval_perplexity import eval_command
from arlm.config import DataConfig
from arlm.data.normalize import corpus_text
from arlm.evaluation.perplexity import sliding_window
from arlm.evaluation.reference import transformers_sliding_window
from tests.helpers import shakespeare

pytestmark = [pytest.mark.real_model, pytest.mark.hf]
CONTEXT, STRIDE, CHARS = 256, 128, 5000


@pytest.mark.slow
@pytest.mark.parametrize("source", ["builtin", "tinyshakespeare"])
def test_perplexity_matches_transformers_on_the_same_windows(smollm2, hf_smollm2, source):
    source = str(shakespeare()) if source == "tinyshakespeare" else source
    text = corpus_text(source, DataConfig(), max_chars=CHARS)
    ids = torch.tensor(smollm2.tokenizer.encode(text))
    ours = sliding_window(smollm2.model, ids, context=CONTEXT, stride=STRIDE)
    theirs = transformers_sliding_window(hf_smollm2, ids, context=CONTEXT, stride=STRIDE)
    assert ours.tokens == theirs.tokens == ids.numel() - 1
    assert abs(ours.perplexity / theirs.perplexity - 1) < 1e-5  # (measured 4e-8, 9e-8: the same float32 weights)
    assert 1.5 < ours.perplexity < 200


@pytest.mark.slow
def test_eval_command_on_a_file(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text(shakespeare().read_text()[:1500])
    lines = []
    result = eval_command(
        "smollm2", file=str(sample), context=128, stride=64, device="cpu", log=lines.append, compare_transformers=True
    )
    assert any("window 128, stride 64" in line for line in lines) and result.bits_per_byte > 0
    compared = next(line for line in lines if "ours / theirs" in line)
    ratio = float(compared.rsplit("ours / theirs: ", 1)[1].rstrip(")"))
    assert abs(ratio - 1) < 1e-4  # (int4, the default, against float32 transformers: 1.00001 measured)


def test_a_special_tokens_text_in_the_file_is_scored_as_text(smollm2, tmp_path):
    """`<|im_end|>` written in a text file is text (as prepare encodes a corpus and llama-perplexity reads one)."""
    text = "The play ends here <|im_end|> and the actors bow.\n" * 4
    (tmp_path / "t.txt").write_text(text)
    result = eval_command("smollm2", file=str(tmp_path / "t.txt"), context=64, stride=32, device="cpu", log=print)
    literal = smollm2.tokenizer.encode_literally(corpus_text(str(tmp_path / "t.txt"), DataConfig()))
    assert result.tokens == len(literal) - 1 != len(smollm2.tokenizer.encode(text)) - 1
