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
