import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
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
