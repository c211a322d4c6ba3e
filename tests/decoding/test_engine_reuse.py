"""An Engine with reuse_prefix keeps the beginning of a one-row prompt its cache holds already and encodes only the
rest (a chat's next turn), with logits equal to a fresh prefill's up to rounding; nothing is kept where the cache
holds other ids, other rows or another dtype."""

import pytest
import torch

import arlm.decoding.engine as engine_module
from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.model.transformer import Transformer

PROMPT = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7]


def _model(seed=0, layers=2, d=32):
    torch.manual_seed(seed)
    config = ModelConfig(
        flavour="llama", vocab_size=50, block_size=96, n_layer=layers, n_head=4, d_model=d, init_std=0.3
    )
    return Transformer(config).eval()


def _widths(model, monkeypatch) -> list[int]:
    """The number of ids in each forward of the model, recorded from now on."""
    widths, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda ids, **kw: widths.append(ids.shape[1]) or forward(ids, **kw))
    return widths


CONFIGS = {
    "greedy": GenerationConfig(strategy="greedy", max_new_tokens=10),
    "sample": GenerationConfig(strategy="sample", max_new_tokens=10, seed=5),
    "speculative": GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=10, num_draft_tokens=3),
    "prompt-lookup": GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=10),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_follow_up_encodes_only_what_the_cache_does_not_hold_and_answers_as_afresh(name, monkeypatch):
    config, model = CONFIGS[name], _model()
    draft = _model(1, layers=1) if name == "speculative" else None
    engine = Engine(model, reuse_prefix=True)
    first = generate(engine, [PROMPT], config, draft=draft).sequences[0].tolist()
    held = engine.length
    assert len(PROMPT) <= held < len(first)  # the prompt and what was generated, but the last token chosen
    follow = first + [11, 12, 13]
    widths = _widths(model, monkeypatch)
    again = generate(engine, [follow], config, draft=draft)
    assert engine.reused == held
    assert widths[0] == len(follow) - 1 - held  # the first forward encodes only what the cache did not hold
    fresh = generate(model, [follow], config, draft=draft)
    assert again.generated() == fresh.generated()


def test_the_kept_positions_give_a_fresh_prefills_logits_up_to_rounding():
    model = _model()
    engine = Engine(model, reuse_prefix=True)
    generate(engine, [PROMPT], CONFIGS["greedy"])
    follow = torch.tensor([PROMPT + [1, 2, 3, 4]])  # (1, 14): the cache holds its first 10
    engine.open(1, 20, prompt=follow)
    assert engine.reused == len(PROMPT)
    engine.prefill(follow[:, engine.length : -1])
    logits = engine.step(follow[:, -1:])  # (1, V)
    fresh = Engine(model)
    fresh.open(1, 20)
    fresh.prefill(follow[:, :-1])
    torch.testing.assert_close(logits, fresh.step(follow[:, -1:]), rtol=1e-5, atol=1e-5)


def test_only_the_shared_beginning_is_kept_and_never_a_prompts_last_token():
    model = _model()
    engine = Engine(model, reuse_prefix=True)
    generate(engine, [PROMPT], CONFIGS["greedy"])
    engine.open(1, 30, prompt=torch.tensor([PROMPT[:6] + [0, 0, 0]]))  # differs from the 7th id on
    assert engine.reused == 6
    engine.prefill(torch.tensor([[0, 0]]))
    engine.open(1, 30, prompt=torch.tensor([PROMPT[:6] + [0, 0]]))  # all of it held: all but its last kept
    assert engine.reused == 7


def test_nothing_is_kept_without_the_flag_after_beam_search_for_padded_rows_or_another_kv_dtype():
    model = _model()
    plain = Engine(model)
    generate(plain, [PROMPT], CONFIGS["greedy"])
    generate(plain, [PROMPT + [1, 2]], CONFIGS["greedy"])
    assert plain.reused == 0
    engine = Engine(model, reuse_prefix=True)
    generate(engine, [PROMPT], GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=4))
    generate(engine, [PROMPT + [1, 2]], CONFIGS["greedy"])
    assert engine.reused == 0  # the beams' rows are not the ids fed
    generate(engine, [PROMPT, PROMPT[:4]], CONFIGS["greedy"])  # padded rows: nothing kept, nothing kept from them
    assert engine.reused == 0
    generate(engine, [PROMPT + [1, 2]], CONFIGS["greedy"])
    assert engine.reused == 0
    generate(engine, [PROMPT + [1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=4, kv_dtype="bfloat16"))
    assert engine.reused == 0
    generate(
        engine, [PROMPT + [1, 2, 3, 4]], GenerationConfig(strategy="greedy", max_new_tokens=4, kv_dtype="bfloat16")
    )
    assert engine.reused == len(PROMPT) + 3


def test_a_compiled_engine_keeps_the_beginning_in_its_static_cache(monkeypatch):
    monkeypatch.setattr(engine_module, "compile_options", lambda device: {"backend": "eager", "fullgraph": True})
    model = _model()
    config = GenerationConfig(strategy="greedy", max_new_tokens=12, compile=True)
    engine = Engine(model, reuse_prefix=True)
    first = generate(engine, [PROMPT], config).sequences[0].tolist()
    follow = first + [11, 12]
    again = generate(engine, [follow], config)
    assert engine.static and engine.reused == len(first) - 1
    assert (
        again.generated()
        == generate(model, [follow], GenerationConfig(strategy="greedy", max_new_tokens=12)).generated()
    )


def test_the_ids_held_follow_the_rows_a_reorder_keeps():
    model = _model()
    engine = Engine(model, reuse_prefix=True)
    other = [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    generate(engine, [other, PROMPT], CONFIGS["greedy"])  # two rows of one length: no padding
    engine.reorder(torch.tensor([1]))  # the cache keeps PROMPT's row alone
    engine.open(1, 40, prompt=torch.tensor([PROMPT + [1, 2]]))
    assert engine.reused == len(PROMPT)
