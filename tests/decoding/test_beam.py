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
