import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer


def test_trace_shows_the_beams_of_every_step_and_ends_with_the_result():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=40, block_size=64, n_layer=2, n_head=2, d_model=16, init_std=0.3)
    ).eval()
    config = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=8)
    events = []
    out = generate(model, [[1, 2, 3]], config, eos_id=5, trace=events.append)
    assert [e["step"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        (beams,) = e["running"]
        assert len(beams) == 3 and all(len(b["tokens"]) == e["step"] for b in beams)
        scores = [b["score"] for b in beams]
        assert scores == sorted(scores, reverse=True)
    (finished,) = events[-1]["finished"]
    best = sorted(finished, key=lambda h: -h["score"])[:2]
    assert [h["tokens"] for h in best] == out.generated()
    assert [h["score"] for h in best] == out.scores.tolist()


def test_the_tokens_counted_are_the_best_hypothesis_of_each_prompt_however_many_are_returned():
    """--stats of one beam search read 20 tokens with num_return_sequences 1 and 60 with 3 (and thrice the rate)."""
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=40, block_size=64, n_layer=2, n_head=2, d_model=16, init_std=0.3)
    ).eval()
    counted = []
    for n in (1, 3):
        config = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=n, max_new_tokens=8)
        out = generate(model, [[1, 2, 3], [4, 5, 6]], config, eos_id=5)
        counted.append(out.stats["new_tokens"])
        assert out.stats["new_tokens"] == sum(out.stats["lengths"][::n])  # the best of each prompt
    assert counted[0] == counted[1]


@pytest.mark.parametrize(
    ("settings", "traced"),
    [
        (dict(num_beams=4, num_return_sequences=3, max_new_tokens=12, repetition_penalty=1.3), True),
        (dict(num_beams=3, num_return_sequences=2, max_new_tokens=10, length_penalty=0.5, early_stopping=False), True),
        (dict(num_beams=3, max_new_tokens=1), True),
        (dict(num_beams=4, num_return_sequences=2, max_new_tokens=9), False),
        (dict(num_beams=3, num_return_sequences=2, max_new_tokens=9), 3),  # top_logprobs 3, untraced
    ],
)
def test_each_returned_tokens_log_probability_is_the_models_own_along_its_hypothesis(settings, traced):
    """token_logprobs (and, traced or asked for by top_logprobs, token_top) of every returned row, prompts of two
    lengths, hypotheses ending at different steps: the log-softmax of a plain forward over the prompt and the row's
    tokens (the model's own, before the repetition penalty), at every generated position; zeros past a row's end."""
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=12, block_size=64, n_layer=2, n_head=2, d_model=16, init_std=0.5)
    ).eval()
    prompts = [[1, 2, 3, 4], [6, 7]]
    config = GenerationConfig(strategy="beam", **settings)
    top = traced if type(traced) is int else None
    out = generate(
        model, prompts, config, eos_id=9, pad_id=0, trace=(lambda e: None) if traced is True else None, top_logprobs=top
    )
    n = config.num_return_sequences
    lengths = out.stats["lengths"]
    assert len(set(lengths)) > 1 or settings["max_new_tokens"] == 1  # (rows ending at different steps)
    for row, made in enumerate(out.generated()):
        ids = torch.tensor([prompts[row // n] + made])
        with torch.no_grad():
            own = torch.log_softmax(model(ids)[0, len(prompts[row // n]) - 1 : -1].float(), dim=-1)  # (L, V)
        chosen = own.gather(1, torch.tensor(made)[:, None])[:, 0]
        torch.testing.assert_close(out.token_logprobs[row, : len(made)], chosen, rtol=1e-4, atol=1e-5)
        assert not out.token_logprobs[row, len(made) :].any()
        if traced:
            ids_top, logprob_top = out.token_top
            best, best_ids = own.topk(ids_top.shape[-1], dim=-1)  # (a vocabulary below MAX_TOP: all of it)
            assert ids_top.shape[-1] == (top or 12) and torch.equal(ids_top[row, : len(made)], best_ids)
            torch.testing.assert_close(logprob_top[row, : len(made)], best, rtol=1e-4, atol=1e-5)
        else:
            assert out.token_top is None


@pytest.mark.parametrize("strategy", ["greedy", "sample", "prompt-lookup"])
def test_top_logprobs_is_refused_where_no_strategy_notes_them(strategy):
    model = Transformer(ModelConfig(flavour="llama", vocab_size=12, block_size=64, n_layer=1, n_head=2, d_model=8))
    config = GenerationConfig(strategy=strategy, temperature=0, max_new_tokens=3)
    with pytest.raises(ArlmError, match=f"top_logprobs is noted by beam search, not by {strategy}"):
        generate(model, [[1, 2]], config, top_logprobs=2)


def test_a_negative_top_logprobs_is_refused_in_one_line():
    """generate(top_logprobs=k) sizes beam search's token_top: below 0 it is refused by name (it was an IndexError
    from inside topk: "selected index k out of range")."""
    model = Transformer(ModelConfig(flavour="llama", vocab_size=12, block_size=64, n_layer=1, n_head=2, d_model=8))
    config = GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=3)
    with pytest.raises(ArlmError, match="top_logprobs must be at least 0; got -1"):
        generate(model, [[1, 2]], config, top_logprobs=-1)
