import pytest

from arlm.commands.demo import GROUNDED_ITEM, _why, compare_grounded


def test_the_why_line_reports_the_measured_figures():
    rows = {
        "greedy": {"tokens_per_s": 100.0, "acceptance": None},
        "speculative (greedy, γ=4)": {"tokens_per_s": 40.0, "acceptance": 0.23},
        "prompt lookup (greedy)": {"tokens_per_s": 107.0, "acceptance": 0.55},
    }
    line = _why(rows, 3)
    assert line.startswith("why: speculative decoding 0.40× at 23% acceptance: at this size")
    assert "prompt lookup 1.07× at 55%: a 3-token prompt" in line


@pytest.mark.slow
@pytest.mark.real_model
def test_the_grounded_comparison_runs_on_smollm2(smollm2):
    lines = []
    summary = compare_grounded(smollm2.model, smollm2.tokenizer, GROUNDED_ITEM, 8, lines.append, repeats=1)
    assert all(row["identical"] == 1 for row in summary.values())
    assert lines[-1].startswith("why: prompt lookup") and any(line.startswith("answer: ") for line in lines)
