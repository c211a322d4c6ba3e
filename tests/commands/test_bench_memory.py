import pytest

from arlm.commands.bench_memory import bench_memory_command


@pytest.mark.slow
def test_the_command_measures_both_backends_in_subprocesses(tmp_path):
    lines = []
    result = bench_memory_command(lengths=(64, 128, 256), out=str(tmp_path / "mem.png"), device="cpu", log=lines.append)
    assert set(result["exponents"]) == {"naive", "sdpa", "naive - sdpa"}
    assert result["exponents"]["naive - sdpa"] == pytest.approx(2.0, abs=0.1)  # the (T, T) scores alone
    assert all(r["saved_bytes"] > 0 and r["max_batch"] > 0 for rows in result["rows"].values() for r in rows)
    assert (tmp_path / "mem.png").exists() and (tmp_path / "mem-speed.png").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--lengths", "abc"], "--lengths takes comma-separated whole numbers (e.g. 128,256,512), got 'abc'"),
        (
            ["--lengths", "32"],
            "--lengths needs two different lengths of 2 or more (a slope is fitted over them), got 32",
        ),
        (
            ["--lengths", "64,64"],
            "--lengths needs two different lengths of 2 or more (a slope is fitted over them), got 64,64",
        ),
        (
            ["--lengths", "1,64"],
            "--lengths needs two different lengths of 2 or more (a slope is fitted over them), got 1,64",
        ),
        (["--budget-gb", "-1"], "--budget-gb must be a number of GB above 0, got -1"),
        (["--budget-gb", "inf"], "--budget-gb must be a number of GB above 0, got inf"),
    ],
)
def test_impossible_settings_are_one_line(tmp_path, capsys, args, line):
    from arlm.cli import main

    assert main(["bench", "memory", *args, "--out", str(tmp_path / "m.png")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "flag"), [({"budget_gb": -1.0}, "--budget-gb"), ({"lengths": (64,)}, "--lengths")])
def test_the_function_refuses_what_the_flags_refuse(tmp_path, kwargs, flag):
    from arlm.errors import ArlmError

    with pytest.raises(ArlmError, match=f"^{flag} "):
        bench_memory_command(out=str(tmp_path / "m.png"), device="cpu", **kwargs)
    assert list(tmp_path.iterdir()) == []
