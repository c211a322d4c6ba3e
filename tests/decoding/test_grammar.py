"""Decoding kept to a JSON schema (llguidance's grammar over the model's tokenizer): every text that ends on EOS
parses and keeps to the schema, greedy or sampled, n rows at a time; what the grammar cannot hold is refused."""

import json

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.data.chat import encode_conversation
from arlm.data.tokenizers import train_tokenizer
from arlm.decoding.generate import generate
from arlm.decoding.grammar import JsonGrammar
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer
from tests.helpers import tiny_text

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
COLOUR = {  # a closed object without whitespace: the only free choice is the colour
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer("bpe", tiny_text(12), 320)
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, d_model=32)
    return Transformer(config).eval(), tok


def _texts(out, tok) -> list[str]:
    """The rows' texts, each checked to have ended on EOS (not on max_new_tokens), EOS left out."""
    rows = out.generated()
    assert all(row[n - 1] == tok.eos_id for row, n in zip(rows, out.stats["lengths"]))
    return [tok.decode(row[: n - 1]) for row, n in zip(rows, out.stats["lengths"])]


def test_a_random_model_keeps_to_the_schema_greedy_and_sampled(tiny):
    model, tok = tiny
    prompt = [tok.encode("the colour is")]
    free = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24), eos_id=tok.eos_id)
    with pytest.raises(json.JSONDecodeError):
        json.loads(tok.decode(free.generated()[0]))  # left alone, the model writes no JSON
    grammar = JsonGrammar(tok, COLOUR)
    for config in (
        GenerationConfig(strategy="greedy", max_new_tokens=48),
        GenerationConfig(strategy="sample", temperature=2.0, seed=5, max_new_tokens=48, num_return_sequences=8),
    ):
        out = generate(model, prompt, config, eos_id=tok.eos_id, grammar=grammar)
        values = [json.loads(text) for text in _texts(out, tok)]
        assert all(set(v) == {"colour"} and v["colour"] in ("red", "green", "blue") for v in values)
    assert len({v["colour"] for v in values}) > 1  # sampled among the allowed tokens


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_answers_in_the_schema_and_in_any_object(smollm2):
    tok = smollm2.tokenizer
    ask = encode_conversation([{"role": "user", "content": "Describe a person named Ada aged 36 as JSON."}], tok)
    person = JsonGrammar(tok, PERSON, smollm2.model.config.vocab_size)
    configs = (
        GenerationConfig(strategy="greedy", max_new_tokens=64),
        GenerationConfig(strategy="sample", temperature=0.7, seed=1, max_new_tokens=160, num_return_sequences=3),
    )
    for config in configs:
        out = generate(smollm2.model, [ask], config, eos_id=tok.eos_id, pad_id=tok.pad_id, grammar=person)
        for text in _texts(out, tok):
            value = json.loads(text)
            assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int)
    anything = JsonGrammar(tok, {"type": "object"}, smollm2.model.config.vocab_size)
    config = GenerationConfig(strategy="greedy", max_new_tokens=256)  # (it writes a longer object, 153 tokens)
    out = generate(smollm2.model, [ask], config, eos_id=tok.eos_id, grammar=anything)
    assert isinstance(json.loads(_texts(out, tok)[0]), dict)


def test_what_the_grammar_cannot_hold_is_refused_in_one_line(tiny):
    model, tok = tiny
    grammar = JsonGrammar(tok, COLOUR)
    refused = {
        "not beam": GenerationConfig(strategy="beam", max_new_tokens=4),
        "not prompt-lookup": GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=4),
        "min_new_tokens masks the EOS": GenerationConfig(strategy="greedy", min_new_tokens=2, max_new_tokens=4),
        "needs an EOS id and stop_at_eos": GenerationConfig(strategy="greedy", stop_at_eos=False, max_new_tokens=4),
        "no_repeat_ngram_size bans": GenerationConfig(strategy="sample", no_repeat_ngram_size=1, max_new_tokens=4),
    }
    for message, config in refused.items():
        with pytest.raises(ArlmError, match=message):
            generate(model, [[1, 2]], config, eos_id=tok.eos_id, grammar=grammar)
    with pytest.raises(ArlmError, match="the JSON schema cannot be used"):
        JsonGrammar(tok, {"type": "nonsense"})
    with pytest.raises(ArlmError, match="not valid JSON"):
        JsonGrammar(tok, "{nope")
    with pytest.raises(ArlmError, match="the JSON schema cannot be used: .*expected a boolean"):
        JsonGrammar(tok, {**COLOUR, "x-guidance": {"whitespace_flexible": "sometimes"}})
    JsonGrammar(tok, {**COLOUR, "x-guidance": 3})  # options that are no object: llguidance's own defaults
    with pytest.raises(ArlmError, match="tokenizer of the tokenizers library"):
        JsonGrammar(train_tokenizer("char", ["abc{}"], 0), COLOUR)


def test_a_batchs_masks_allow_the_tokens_llguidance_accepts_one_by_one(tiny):
    """mask_rows over rows at different places in the text (one without a grammar, one done) leaves finite exactly the
    tokens llguidance's own check (validate_tokens, token by token) accepts at each row's place, the others -inf, and
    the rows without a running matcher as they were."""
    from arlm.decoding.grammar import mask_rows

    _, tok = tiny
    grammar = JsonGrammar(tok, COLOUR)
    matchers = [grammar.matcher() for _ in range(4)]
    for token in tok.encode('{"colour":"'):
        matchers[1].advance(token)
    for token in tok.encode('{"colour":"red"}'):
        matchers[2].advance(token)
    logits = torch.randn(6, tok.vocab_size, generator=torch.Generator().manual_seed(0))
    done = torch.tensor([False, False, False, False, False, True])
    masked = mask_rows([*matchers, None, matchers[3]], logits, done)
    assert torch.equal(masked[4:], logits[4:])  # no grammar; done
    for row, matcher in enumerate(matchers[:3]):
        own = matcher._matcher
        accepted = [own.validate_tokens([t]) == 1 for t in range(tok.vocab_size) if t != tok.eos_id]
        finite = [bool(masked[row, t].isfinite()) for t in range(tok.vocab_size) if t != tok.eos_id]
        assert finite == accepted and any(accepted) == (row != 2), row
        assert bool(masked[row, tok.eos_id].isfinite()) == own.is_accepting(), row  # EOS once the JSON is complete
        kept = masked[row].isfinite()
        assert torch.equal(masked[row, kept], logits[row, kept])
