"""A setting refused as unread by a strategy must indeed change nothing in what that strategy decodes."""

import dataclasses

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
from arlm.decoding.settings import EVERY, FIELDS, NEUTRAL, READ_BY, refuse_unread, unread
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer

OTHER_VALUE = {  # a value off each setting's neutral one and off GenerationConfig's default
    "temperature": 0.7,
    "top_k": 3,
    "top_p": 0.5,
    "min_p": 0.3,
    "num_beams": 2,
    "num_return_sequences": 2,
    "length_penalty": 0.3,
    "early_stopping": True,
    "num_draft_tokens": 2,
    "adaptive_draft": True,
    "prompt_lookup_ngram": 1,
    "lookup_first": True,
}


def _model(seed: int, n_layer: int = 2) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=24, block_size=64, n_layer=n_layer, n_head=2, d_model=16)
    return Transformer(config).eval()


def _decode(config: GenerationConfig) -> torch.Tensor:
    prompt = [[3, 5, 7, 3, 5, 9, 11]]
    draft = _model(1, n_layer=1) if config.strategy == "speculative" else None
    return generate(_model(0), prompt, config, eos_id=None, pad_id=0, draft=draft).sequences


@pytest.mark.parametrize("strategy", list(READ_BY))
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_what_a_strategy_does_not_read_changes_nothing(strategy, temperature):
    base = GenerationConfig(strategy=strategy, temperature=temperature, max_new_tokens=10, seed=0)
    expected = _decode(base)
    refused = 0
    for name, value in OTHER_VALUE.items():
        changed = dataclasses.replace(base, **{name: value})
        if not unread(changed, [name]):
            continue
        refused += 1
        with pytest.raises(ArlmError, match=name):
            refuse_unread(changed, [name])
        try:
            changed.validate()
        except ArlmError:
            continue  # refused on its own already
        assert torch.equal(_decode(changed), expected), name
    assert refused > 0


def test_neutral_values_and_other_names_pass():
    config = GenerationConfig(strategy="beam", temperature=0.0)
    assert unread(config, [name for name in NEUTRAL if name in FIELDS]) == []
    assert unread(config, ["model", "n", "seed", "stop"]) == []
    assert unread(dataclasses.replace(config, top_k=5, temperature=0.5), ["top_k", "temperature"]) == [
        "top_k",
        "temperature",
    ]
    with pytest.raises(ArlmError, match="--top-p does nothing at --temperature 0"):
        refuse_unread(GenerationConfig(temperature=0.0, top_p=0.5), ["top_p"], lambda n: "--" + n.replace("_", "-"))


def test_every_setting_has_a_place():
    placed = {name for fields in READ_BY.values() for name in fields}
    assert placed | set(EVERY) == FIELDS


def test_the_server_takes_openai_sampling_knobs_at_temperature_0_and_refuses_arlms_own():
    """top_k and min_p (arlm's, no OpenAI client sends them by default) passed silently at temperature 0."""
    greedy = GenerationConfig(strategy="greedy", temperature=0.0, top_p=0.9, top_k=5, min_p=0.1)
    assert unread(greedy, ["top_p", "top_k", "min_p"], at_zero=False) == ["top_k", "min_p"]
    assert unread(greedy, ["top_p", "top_k"]) == ["top_p", "top_k"]
    beam = GenerationConfig(strategy="beam", temperature=0.7, top_p=0.9)
    assert unread(beam, ["temperature", "top_p"], at_zero=False) == ["temperature", "top_p"]


def test_the_lookup_n_gram_is_read_by_speculative_decoding_only_with_lookup_first():
    config = GenerationConfig(strategy="speculative", prompt_lookup_ngram=2)
    spell = lambda n: "--" + n.replace("_", "-")
    with pytest.raises(ArlmError, match="--prompt-lookup-ngram does nothing with --strategy speculative unless --look"):
        refuse_unread(config, ["prompt_lookup_ngram"], spell)
    assert unread(dataclasses.replace(config, lookup_first=True), ["prompt_lookup_ngram"]) == []
    assert unread(dataclasses.replace(config, strategy="prompt-lookup"), ["prompt_lookup_ngram"]) == []


def test_a_lookup_n_gram_below_what_drafting_by_the_match_needs_is_refused_where_given():
    """--prompt-lookup-ngram 1..3 under --adaptive-draft or --lookup-first was raised to 4 without a word (the stats
    of n = 1..4 were the same); its default, not given, is raised as before."""
    from arlm.decoding.settings import BY_MATCH_NGRAM

    spell = lambda n: "--" + n.replace("_", "-")
    adaptive = GenerationConfig(strategy="prompt-lookup", adaptive_draft=True, prompt_lookup_ngram=2, temperature=0)
    with pytest.raises(ArlmError, match=r"^--prompt-lookup-ngram 2 would be raised to 4: --adaptive-draft and"):
        refuse_unread(adaptive, ["strategy", "adaptive_draft", "prompt_lookup_ngram"], spell)
    refuse_unread(adaptive, ["strategy", "adaptive_draft"], spell)  # (the default: not the user's)
    refuse_unread(dataclasses.replace(adaptive, prompt_lookup_ngram=BY_MATCH_NGRAM), ["prompt_lookup_ngram"], spell)
    plain = dataclasses.replace(adaptive, adaptive_draft=False)
    refuse_unread(plain, ["strategy", "prompt_lookup_ngram"], spell)  # (matched as given)
