from arlm.commands.runs import run_label


def test_run_labels_are_the_run_folder_and_unique():
    assert run_label("runs/a") == "a"
    assert run_label("runs/a/checkpoints/step-00000020") == "a"
    assert run_label("other/a", ["a"]) == "a-2"
