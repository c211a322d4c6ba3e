"""arlm train end to end: what it prepares and reports."""

import json

from arlm.cli import main
from tests.helpers import chat_raw, tiny_base, write_yaml


def test_train_reports_chat_conversations_cut_to_the_context_as_prepare_does(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    pairs = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)] + [{"prompt": "x", "completion": "y" * 80}]
    chat.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    raw = chat_raw(tmp_path, tiny_base(tmp_path / "base"), chat, data={"val_fraction": 0.0}, train={"max_steps": 1})
    assert main(["train", "--preset", str(write_yaml(tmp_path / "sft.yaml", raw))]) == 0
    out = capsys.readouterr().out
    assert "train: 7 conversations, " in out and ", 1 cut to the context (answers shortened)" in out
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["splits"]["train"]["truncated"] == 1
