import copy
from types import SimpleNamespace

import pytest
import torch

from arlm.bench.speculative import acceptance, run_speculative_bench, schemes
from arlm.config import ModelConfig
from arlm.interop.loading import to_dtype
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer


@pytest.mark.slow
def test_every_scheme_runs_on_every_prompt_and_matches_greedy():
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=48, block_size=64, n_layer=3, n_head=2, d_model=32, init_std=0.3)
    target = Transformer(config).eval()
    cheaper = optimize_for_decoding(to_dtype(copy.deepcopy(target), "int4", "cpu"))
    plan = schemes(target, new_tokens=10, self_layers=2, cheaper=("int4", cheaper))
    assert [s.config.strategy for s in plan] == ["greedy"] + ["prompt-lookup"] * 2 + ["speculative"] * 6
    assert [s.config.lookup_first for s in plan[-2:]] == [True, True]
    lines = []
    sets = {"grounded": [[1, 2, 3, 1, 2], [5, 6, 7]], "chat": [[9, 8]]}
    results = run_speculative_bench(target, sets, plan, repeats=2, log=lines.append)
    for name, prompts in sets.items():
        summary = results[name]
        assert summary["greedy"]["ratio"] == summary["greedy"]["decode_ratio"] == 1.0
        for row in summary.values():  # every scheme gave greedy's text on every prompt
            assert row["identical"] == row["prompts"] == len(prompts) and row["tokens_per_s"] > 0
            assert row["decode_ratio"] > 0 and row["decode_worst_ratio"] <= row["decode_ratio"]
    assert any(line.startswith("| self-speculation (2 layers), adaptive γ |") for line in lines)
    assert any(line.startswith("| prompt lookup, else int4 weights, adaptive γ |") for line in lines)


def test_a_run_that_drafted_nothing_has_no_acceptance_rather_than_none_accepted():
    """Adaptive γ that stopped drafting read "0%" in the tables, as a draft that is always wrong does."""
    rows = [(0, 0), (8, 2), (8, 4), (4, 3)]  # (proposed, accepted) per run
    runs = [SimpleNamespace(stats={"proposed": p, "accepted": a, "acceptance_rate": a / max(p, 1)}) for p, a in rows]
    assert acceptance(runs[:1]) is None
    assert acceptance(runs) == 0.5  # the median of the runs that drafted: 0.25, 0.5, 0.75
