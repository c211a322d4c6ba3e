import pytest

from arlm.errors import ArlmError
from arlm.training.logging import read_metrics


def test_read_metrics_names_the_file_and_line_of_a_broken_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2\n', encoding="utf-8")
    with pytest.raises(ArlmError, match=r"metrics\.jsonl, line 3: not valid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n\n{"step": 2}\n', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]


def test_non_finite_values_are_written_as_null_so_strict_json_readers_parse_them(tmp_path):
    """A diverged run's perplexity (inf) was written by the final record as the token Infinity, which jq and
    JavaScript refuse; every record goes through MetricsLog, which writes null."""
    import json

    from arlm.training.logging import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"event": "final", "step": 3, "final_val_perplexity": float("inf"), "final_val_loss": float("nan")})
    log.close()

    def strict(name):
        raise ValueError(f"not JSON: {name}")

    line = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8")
    assert json.loads(line, parse_constant=strict) == {
        "event": "final", "step": 3, "final_val_perplexity": None, "final_val_loss": None
    }  # fmt: skip
