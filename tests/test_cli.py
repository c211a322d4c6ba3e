"""Bad input ends with one line on stderr and exit code 2, and nothing on disk is lost or overwritten."""

import argparse
import errno
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from arlm.cli import VERBS, main, make_parser
from arlm.commands.train import sample_config, train_command
from arlm.config import GenerationConfig
from arlm.model import native
from tests.helpers import REPO, run_cli, tiny_config, tiny_raw, write_corpus, write_yaml


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (preset file, run folder)."""
    tmp = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(tmp / "corpus")
    preset = write_yaml(tmp / "tiny.yaml", tiny_raw(tmp, corpus, train={"max_steps": 10}))
    assert main(["train", "--preset", str(preset)]) == 0
    return preset, tmp / "run"


def _fails(capsys, *argv, match):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_empty_binary_and_non_utf8_sources(tmp_path, capsys):
    _fails(
        capsys, "prepare", "--out", str(tmp_path / "d"), "--data.source", str(tmp_path / "nope"), match="does not exist"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _fails(capsys, "prepare", "--out", str(tmp_path / "d"), "--data.source", str(empty), match="holds no text")
    blob = tmp_path / "blob.dat"
    blob.write_bytes(bytes(range(256)))
    _fails(capsys, "prepare", "--out", str(tmp_path / "d"), "--data.source", str(blob), match="looks binary")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"na\xefve text")
    _fails(
        capsys,
        "prepare",
        "--out",
        str(tmp_path / "d"),
        "--data.source",
        str(latin),
        match="not valid UTF-8 at byte offset 2",
    )
    assert not (tmp_path / "d").exists()


def test_unknown_preset_key_and_bad_values(capsys):
    _fails(capsys, "train", "--preset", "no-such-preset", match="unknown preset 'no-such-preset'")
    _fails(capsys, "train", "--train.learning_rate", "1e-3", match="unknown config key train.learning_rate")
    _fails(capsys, "train", "--model.n_layer", "two", match="model.n_layer: expected int")
    _fails(capsys, "train", "--model.flavour", "gpt5", match="model.flavour must be one of")


def test_corpus_shorter_than_one_block(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("A short text. " * 20)
    _fails(
        capsys,
        "train",
        "--data.source",
        str(small),
        "--data.tokenizer",
        "char",
        "--train.out_dir",
        str(tmp_path / "run"),
        match="shorter than one block",
    )


def test_prepare_refuses_a_split_too_small_and_an_out_that_is_a_file(tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\t\n  \n")
    out = str(tmp_path / "d")
    _fails(capsys, "prepare", "--out", out, "--data.source", str(blank), match="shorter than one block")
    one = tmp_path / "one.txt"
    one.write_text("x")
    _fails(capsys, "prepare", "--out", out, "--data.source", str(one), match="the train split holds 0 tokens")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    _fails(capsys, "prepare", "--out", str(notes), "--data.source", str(blank), match="is a file, not a folder")
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "notes.txt", "one.txt"]


def test_existing_run_is_kept(trained, capsys):
    preset, run = trained
    before = _snapshot(run)
    _fails(capsys, "train", "--preset", str(preset), match="already holds a run")
    assert _snapshot(run) == before


def test_tokenizer_mismatch_between_checkpoint_and_data(trained, tmp_path, capsys):
    preset, run = trained
    other = tmp_path / "other"
    assert main(["prepare", "--preset", str(preset), "--out", str(other), "--data.lowercase", "true"]) == 0
    _fails(capsys, "eval", "perplexity", str(run), "--data", str(other), match="trained with another tokenizer")


def test_prompt_longer_than_the_context(trained, capsys):
    _, run = trained
    _fails(capsys, "generate", str(run), "--prompt", "x" * 40, "--strategy", "greedy", match="context holds 32")


def test_bad_generation_options(trained, capsys):
    """A refused setting is named by the flag that gave it (GenerationConfig's refusals name its fields, which the
    server's JSON spells so)."""
    _, run = trained
    _fails(capsys, "generate", str(run), "--top-p", "1.5", match="error: --top-p must be in (0, 1], got 1.5")
    _fails(capsys, "generate", str(run), "--temperature", "-1", match="error: --temperature must be >= 0")
    beam = ["--strategy", "beam", "--num-beams", "0"]
    _fails(capsys, "generate", str(run), *beam, match="error: --num-beams must be >= 1")
    lookup = "error: --lookup-first goes with the speculative strategy (a draft"
    _fails(capsys, "generate", str(run), "--lookup-first", match=lookup)
    _fails(capsys, "generate", str(run), "--compile", "maybe", match="--compile: expected true or false")
    _fails(
        capsys,
        "generate",
        str(run),
        "--strategy",
        "beam",
        "--num-beams",
        "2",
        "--num-return-sequences",
        "3",
        match="error: --num-return-sequences (3) must be <= --num-beams (2)",
    )


def test_truncated_checkpoint_is_refused_and_the_previous_named(trained, tmp_path, capsys):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    older = copy / "checkpoints" / "step-00000005"
    shutil.copytree(copy / "checkpoints" / "step-00000010", older)
    newest = copy / "checkpoints" / "step-00000010"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _fails(capsys, "generate", str(newest), "--max-new-tokens", "3", match="newest intact checkpoint is")


@pytest.mark.slow
def test_the_real_exit_code_and_a_working_eval_and_generate(trained):
    _, run = trained
    bad = run_cli("train", "--preset", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    ok = run_cli("eval", "perplexity", str(run), "--split", "test")
    assert ok.returncode == 0 and "perplexity" in ok.stdout
    gen = run_cli("generate", str(run), "--prompt", "The ", "--max-new-tokens", "50", "--seed", "1", "--stats")
    assert gen.returncode == 0 and gen.stdout.startswith("The ") and "tokens/s" in gen.stderr


def test_speculative_generation_with_show_drafts_and_export(trained, tmp_path, capsys):
    _, run = trained
    assert (
        main(
            [
                "generate",
                str(run),
                "--prompt",
                "The ",
                "--strategy",
                "speculative",
                "--draft",
                str(run),
                "--temperature",
                "0",
                "--max-new-tokens",
                "20",
                "--show-drafts",
                "--stats",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "[" in captured.out and "acceptance 100.00%" in captured.err  # the model drafting for itself
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    _fails(capsys, "export", "hf", str(run), str(tmp_path / "hf"), match="pass --overwrite to replace it")


def test_the_targets_own_weights_in_int4_draft_for_it(trained, capsys):
    _, run = trained
    argv = ["generate", str(run), "--prompt", "The ", "--temperature", "0", "--max-new-tokens", "20"]
    assert main([*argv, "--strategy", "greedy"]) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--strategy", "speculative", "--draft", "self:int4", "--stats"]) == 0
    drafted = capsys.readouterr()
    assert drafted.out == plain and "acceptance" in drafted.err
    _fails(capsys, *argv, "--strategy", "speculative", "--draft", "self:int3", match="self:DTYPE with DTYPE one of")


def test_a_draft_model_loads_at_draft_dtype(trained, capsys, monkeypatch):
    """--draft-dtype picks a draft model's weights apart from the target's (the output stays greedy's); refused
    where there is no draft model of its own."""
    from arlm.interop import loading
    from arlm.model.quant import Int8Linear

    _, run = trained
    argv = ["generate", str(run), "--prompt", "The ", "--temperature", "0", "--max-new-tokens", "20"]
    assert main([*argv, "--strategy", "greedy"]) == 0
    plain = capsys.readouterr().out
    loaded, load_model = [], loading.load_model

    def spy(ref, **kwargs):
        loaded.append(load_model(ref, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(loading, "load_model", spy)
    speculative = [*argv, "--strategy", "speculative", "--draft", str(run)]
    assert main([*speculative, "--dtype", "float32", "--draft-dtype", "int8", "--stats"]) == 0
    drafted = capsys.readouterr()
    assert drafted.out == plain and "acceptance" in drafted.err
    target, draft = (entry.model for entry in loaded)
    assert not any(isinstance(m, Int8Linear) for m in target.modules())
    assert any(isinstance(m, Int8Linear) for m in draft.modules())
    _fails(capsys, *argv, "--draft-dtype", "int8", match="--draft-dtype does nothing without --draft MODEL")
    _fails(
        capsys, *argv, "--strategy", "speculative", "--draft", "self:1", "--draft-dtype", "int8", match="for a draft"
    )


def test_tensorboard_mirrors_the_metrics(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 5, "tensorboard": True})
    train_command(config, log=lambda _: None)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_eval_calibration_and_exposure_bias_write_their_figures(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "cal.png"
    assert main(["eval", "calibration", str(run), "--bins", "10", "--out", str(out)]) == 0
    assert "ECE" in capsys.readouterr().out and out.exists()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"]["run"]["n_bins"] == 10 and saved["measured"]["run"]["dtype"] == "float32"
    out = tmp_path / "eb.png"
    argv = ["eval", "exposure-bias", str(run), "--prompt-len", "4", "--length", "8", "--sequences", "6"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "gap" in capsys.readouterr().out and out.exists()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert len(saved["results"]["run"]["gap"]) == 8 and saved["measured"]["run"]["device"] == "cpu"
    _fails(capsys, "eval", "exposure-bias", str(run), "--prompt-len", "4", "--length", "500", match="context")
    _fails(capsys, "study", "calibration", "--train.nope", "1", match="nope")


def _verb_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"arlm {name}")
    importlib.import_module(VERBS[name]).add_arguments(parser)
    return parser


def _flags(name: str) -> set[str]:
    return {flag for action in _verb_parser(name)._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", list(VERBS))
def test_every_verb_is_one_module_with_its_help_line(name, capsys):
    module = importlib.import_module(VERBS[name])
    assert callable(module.add_arguments) and callable(module.run) and module.__doc__
    with pytest.raises(SystemExit) as done:
        main([*name.split(), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: arlm {name} ")
    assert "".join(module.__doc__.split("\n\n")[0].split()) in "".join(out.split())  # help wraps lines


def test_each_verb_keeps_its_own_flags():
    """A loop over verbs once left its variable pointing at the last sub-parser, so flags meant for one verb
    landed on whichever the loop ended on; each verb now declares its own in its own module."""
    assert {"--prompt-len", "--length", "--sequences"} <= _flags("eval exposure-bias")
    assert {"--bins", "--batches"} <= _flags("eval calibration")
    assert {"--scheduled-sampling", "--sequences"} <= _flags("study exposure-bias")
    assert not _flags("eval calibration") & {"--prompt-len", "--length", "--sequences", "--scheduled-sampling"}
    assert not _flags("eval exposure-bias") & {"--bins", "--batches", "--scheduled-sampling"}
    assert not _flags("study calibration") & {"--scheduled-sampling", "--sequences", "--bins", "--prompt-len"}
    assert not _flags("bench memory") & {"--steps", "--model", "--new-tokens"}
    assert not _flags("bench decode") & {"--steps", "--lengths", "--budget-gb"}


def test_one_guard_for_config_overrides(trained, capsys):
    _, run = trained
    takes = [name for name in VERBS if getattr(importlib.import_module(VERBS[name]), "CONFIG_OVERRIDES", False)]
    assert set(takes) == {
        "prepare", "train", "distill", "sweep", "study calibration", "study exposure-bias", "study sft", "bench train"
    }  # fmt: skip
    _fails(capsys, "eval", "calibration", str(run), "--prompt-len", "4", match="unexpected argument '--prompt-len'")
    _fails(capsys, "plot", str(run), "--train.lr", "1", match="unexpected argument '--train.lr'")
    _fails(capsys, "prepare", "--bogus", match="unexpected argument '--bogus'; overrides look like")
    _fails(capsys, "prepare", "--data.source", match="override --data.source needs a value")


def test_readme_and_help_spell_the_verbs_as_the_registry():
    """One spelling per verb: every `arlm ...` line of the README names a registered verb, every verb is in the
    README, and no argv is rewritten (the parser takes the registry's words as they are)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```.*?```", readme, re.S) + re.findall(r"`[^`\n]+`", readme)
    heads = {name.split()[0] for name in VERBS if " " in name}
    spelled = set()
    for words in re.findall(r"(?:^|\s|`)(?:-m )?arlm ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*))?", "\n".join(code), re.M):
        spelled.add(" ".join(words) if words[0] in heads else words[0])
    assert spelled <= set(VERBS), f"README spells verbs the CLI does not know: {sorted(spelled - set(VERBS))}"
    assert set(VERBS) <= spelled, f"verbs missing from the README: {sorted(set(VERBS) - spelled)}"
    help_text = " ".join(make_parser([]).format_help().split())
    assert all(head in help_text for head in {name.split()[0] for name in VERBS})


def _generate(capsys, *argv):
    assert main(["generate", *argv]) == 0
    return capsys.readouterr().out


def test_a_streamed_prompt_is_cut_at_the_stop_string(trained, capsys):
    _, run = trained
    args = [str(run), "--prompt", "The ", "--max-new-tokens", "40", "--seed", "7"]
    whole = _generate(capsys, *args)[len("The ") : -1]
    stop = whole[10:14]  # four characters (tokens) in the middle of the text
    assert _generate(capsys, *args, "--stop", stop) == "The " + whole[: whole.find(stop)] + "\n"


def test_nothing_is_printed_before_an_error(trained, capsys):
    _, run = trained
    assert main(["generate", str(run), "--prompt", "x" * 40, "--strategy", "greedy"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "context holds 32" in captured.err


def test_max_new_tokens_zero_prints_the_prompt(trained, capsys):
    _, run = trained
    for strategy in ("greedy", "sample", "beam", "prompt-lookup"):
        assert _generate(capsys, str(run), "--prompt", "The ", "--max-new-tokens", "0", "--strategy", strategy) == (
            "The \n"
        )


def test_several_samples_per_prompt_and_refused_options(trained, capsys):
    _, run = trained
    argv = [str(run), "--prompt", "The ", "--num-return-sequences", "3", "--max-new-tokens", "12", "--seed", "3"]
    out = _generate(capsys, *argv)
    assert [line for line in out.splitlines() if line.startswith("===")] == ["=== 0.0", "=== 0.1", "=== 0.2"]
    texts = [row.split("\n", 1)[1] for row in out.split("=== ")[1:]]  # without the headers
    assert len(set(texts)) == 3 and all(t.startswith("The ") for t in texts)  # three different samples
    _fails(capsys, "generate", str(run), "--strategy", "greedy", "--num-return-sequences", "3", match="needs")
    _fails(capsys, "generate", str(run), "--stop", "", match="stop string must not be empty")
    _fails(capsys, "generate", str(run), "--strategy", "gready", match="--strategy must be one of")


def test_the_generate_section_sets_the_defaults(tmp_path, corpus_dir, capsys):
    greedy = {"strategy": "greedy", "max_new_tokens": 9, "stop_at_eos": False}
    train = {"max_steps": 4, "sample_tokens": 9, "sample_prompt": "The "}
    raw = tiny_raw(tmp_path, corpus_dir, train=train, generate=greedy)
    assert main(["train", "--preset", str(write_yaml(tmp_path / "p.yaml", raw))]) == 0
    header, _, rest = capsys.readouterr().out.partition("--- sample (")[2].partition(") ---\n")
    sample = rest.rsplit("\n---\n", 1)[0]
    run = [str(tmp_path / "run"), "--prompt", "The "]
    assert len(sample) == 4 + 9 and _generate(capsys, *run) == sample + "\n"  # the run's generate: section
    assert _generate(capsys, *run, "--max-new-tokens", "4") == sample[: 4 + 4] + "\n"  # a flag wins over it
    assert header == "9 tokens, greedy, temperature 1.0"
    other = write_yaml(tmp_path / "o.yaml", {"generate": {"strategy": "sample", "seed": 3, "max_new_tokens": 20}})
    flags = ["--strategy", "sample", "--seed", "3", "--max-new-tokens", "20", "--stop-at-eos", "true"]
    from_preset = _generate(capsys, *run, "--preset", str(other))
    assert from_preset == _generate(capsys, *run, *flags) and from_preset != sample + "\n"  # a preset's section


def test_the_end_of_training_sample_follows_the_generate_section():
    config = sample_config(GenerationConfig(strategy="speculative", temperature=0.6, top_k=5), 30, seed=11)
    assert config == GenerationConfig(strategy="sample", temperature=0.6, top_k=5, max_new_tokens=30, seed=11)
    assert sample_config(GenerationConfig(seed=2), 30, seed=11).seed == 2


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (("--train.lr", "nan"), "train.lr must be a finite number"),
        (("--train.lr", "inf"), "train.lr must be a finite number"),
        (("--train.eval_batches", "-1"), "train.eval_batches must be 0 or more"),
        (("--train.final_eval_batches", "-1"), "train.final_eval_batches must be 0 or more"),
        (("--train.threads", "-1"), "train.threads must be 0 or more"),
        (("--train.checkpoint_interval", "-5"), "train.checkpoint_interval must be 0 or more"),
        (("--train.warmup_steps", "-1"), "train.warmup_steps must be 0 or more"),
        (("--train.beta2", "1"), "must be below 1"),
        (("--model.block_size", "1"), "model.block_size must be at least 2"),
    ],
)
def test_impossible_settings_are_refused_before_anything_is_written(tmp_path, capsys, override, match):
    corpus = write_corpus(tmp_path / "corpus")
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus, train={"max_steps": 1}))
    out = tmp_path / "run"
    _fails(capsys, "train", "--preset", str(preset), "--train.out_dir", str(out), *override, match=match)
    assert not out.exists()


def test_a_file_where_a_folder_is_needed(tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    _fails(capsys, "train", "--train.out_dir", str(file), match="is a file")
    _fails(capsys, "prepare", "--out", str(file), match="is a file")
    assert file.read_text() == "keep me"


def test_kv_dtype_for_generate_and_eval_or_one_line(trained, tmp_path, capsys):
    _, run = trained
    argv = ["generate", str(run), "--prompt", "The ", "--strategy", "greedy", "--max-new-tokens", "8"]
    assert main([*argv, "--kv-dtype", "bfloat16"]) == 0
    _fails(capsys, *argv, "--kv-dtype", "float16", match="--kv-dtype must be one of auto, float32, bfloat16")
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat. " * 20)
    assert main(["eval", "perplexity", str(run), "--file", str(text), "--kv-dtype", "bfloat16"]) == 0
    assert "bfloat16 KV cache" in capsys.readouterr().out
    _fails(
        capsys, "eval", "perplexity", str(run), "--split", "test", "--kv-dtype", "bfloat16", match="goes with --file"
    )


def test_every_loader_takes_a_quantized_dtype(trained, capsys):
    _, run = trained
    argv = ["generate", str(run), "--prompt", "The ", "--strategy", "greedy", "--max-new-tokens", "8"]
    assert main([*argv, "--dtype", "int8"]) == 0
    assert main(["eval", "perplexity", str(run), "--split", "test", "--dtype", "int8", "--device", "auto"]) == 0
    assert "perplexity" in capsys.readouterr().out
    _fails(capsys, "generate", str(run), "--dtype", "int4", "--device", "meta", match="'meta' is not one arlm runs on")


def test_float16_on_the_cpu_runs_with_a_note_and_bfloat16_without(trained, capsys):
    from arlm.commands.decoding import CPU_FLOAT16_NOTE

    _, run = trained
    argv = [
        "generate",
        str(run),
        "--prompt",
        "The ",
        "--strategy",
        "greedy",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--dtype", "float16"]) == 0
    assert capsys.readouterr().err == CPU_FLOAT16_NOTE + "\n"
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().err == ""


def test_help_lists_every_verb_without_importing_torch():
    """`arlm --help` reads each verb's help line from its source: a fresh interpreter prints the list (each line the
    module's own first docstring line) and never imports torch or a verb module."""
    code = (
        "import sys\nfrom arlm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', 'torch' in sys.modules, any(m.startswith('arlm.commands.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().endswith("LOADED False False")
    help_text = " ".join(out.split())
    for name, module_name in VERBS.items():
        if " " not in name:
            assert importlib.import_module(module_name).__doc__.strip().splitlines()[0] in help_text, name
    assert run_cli("--help").returncode == 0


def test_version_prints_the_packages_version():
    import arlm

    done = run_cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"arlm {arlm.__version__}")
    assert importlib.metadata.version("arlm") == arlm.__version__  # the installed package's, as pyproject says


def test_verb_help_never_imports_torch():
    """`arlm VERB --help` imports the verb's module, which keeps torch for its run: a fresh interpreter builds and
    parses every verb's help and names the first verb whose parser loaded torch."""
    code = (
        "import contextlib, io, sys\nfrom arlm.cli import VERBS, make_parser\nfirst = None\n"
        "for name in VERBS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        make_parser(name.split()).parse_args([*name.split(), '--help'])\n"
        "    if 'torch' in sys.modules:\n        first = name\n        break\n"
        "print('TORCH LOADED BY', first)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "TORCH LOADED BY None"


@pytest.mark.skipif(
    not set(native.NEEDED_FLAGS) <= native._cpu_flags(), reason="this CPU is not one arlm's kernels are for"
)
def test_a_failed_build_of_the_kernels_is_one_warning_line_and_generation_goes_on(trained, tmp_path, monkeypatch):
    """The model then runs on PyTorch's kernels, several times slower: the user reads why, in one line."""
    cc = tmp_path / "cc"
    cc.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "a compiler 1.0"; exit 0; }\n'
        "echo 'quantized.c:9:1: error: unknown type name nope' >&2\nexit 1\n"
    )
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    _, run = trained
    gen = run_cli("generate", str(run), "--prompt", "The ", "--max-new-tokens", "5", "--dtype", "int8")
    assert gen.returncode == 0 and gen.stdout.startswith("The ")
    lines = [line for line in gen.stderr.splitlines() if "did not compile" in line]
    assert lines == [
        f"warning: its CPU kernels did not compile with {cc} (quantized.c:9:1: error: unknown type name nope); "
        "PyTorch's kernels run instead, several times slower (ARLM_NATIVE=0 silences this)"
    ]
    assert "native.py" not in gen.stderr and "Traceback" not in gen.stderr


def _full_disk_errors() -> list[BaseException]:
    """What writers raise on a full disk, as met here on a 2 MB tmpfs: safetensors (`arlm export hf`, checkpoints),
    NumPy's tofile (`arlm export gguf`), tokenizers (a tokenizer's save), and an OSError wrapped by another error."""
    from safetensors import SafetensorError

    wrapped = RuntimeError("could not save")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/full/.out.tmp-1")
    return [
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError("Not enough free space to write 113246208 bytes after offset 1785280"),
        Exception("No space left on device (os error 28)"),
        wrapped,
    ]


@pytest.mark.parametrize("error", _full_disk_errors(), ids=["safetensors", "numpy", "tokenizers", "wrapped"])
def test_a_full_disk_is_one_line_whatever_writer_met_it(monkeypatch, capsys, error):
    def export_hf(*args, **kwargs):
        raise error

    monkeypatch.setattr("arlm.interop.hf.export_hf", export_hf)
    assert main(["export", "hf", "smollm2", "out"]) == 2
    where = " while writing /full/.out.tmp-1" if isinstance(error, RuntimeError) else ""
    line = f"error: the disk is full{where}; free some space or write elsewhere"
    assert capsys.readouterr().err.splitlines() == [line]


def _refused_errors() -> list[tuple[BaseException, str]]:
    """What writers raise where the storage refuses a write, as met here on a read-only tmpfs (the writers of
    _full_disk_errors), and a folder without write permission (a user's own, not root's), with the line each gives."""
    from safetensors import SafetensorError

    read_only = "is on a read-only file system; write elsewhere"
    return [
        (OSError(errno.EROFS, "Read-only file system", "/ro/.out.tmp-1"), f"/ro/.out.tmp-1 {read_only}"),
        (
            SafetensorError('Error while serializing: I/O error: Read-only file system (os error 30) at path "/ro/x"'),
            f"the output {read_only}",
        ),
        (Exception("Read-only file system (os error 30)"), f"the output {read_only}"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/usr/out"),
            "permission denied: /usr/out; check its permissions or use another path",
        ),
    ]


@pytest.mark.parametrize(("error", "line"), _refused_errors(), ids=["oserror", "safetensors", "tokenizers", "eacces"])
def test_a_read_only_or_forbidden_path_is_one_line(monkeypatch, capsys, error, line):
    def export_hf(*args, **kwargs):
        raise error

    monkeypatch.setattr("arlm.interop.hf.export_hf", export_hf)
    assert main(["export", "hf", "smollm2", "out"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]


def test_other_errors_keep_their_traceback(monkeypatch):
    def export_hf(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("arlm.interop.hf.export_hf", export_hf)
    with pytest.raises(OSError, match="Input/output error"):
        main(["export", "hf", "smollm2", "out"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--dtype", "foo"], "error: argument --dtype: invalid choice: 'foo' (choose from 'auto', "),
        (["export", "gguf", "runs/x"], "error: the following arguments are required: out (see arlm export gguf"),
        (["nothing"], "error: argument VERB: invalid choice: 'nothing'"),
    ],
)
def test_what_argparse_refuses_is_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_a_job_whose_output_pipe_closes_does_not_report_success(tmp_path, corpus_dir):
    """`arlm prepare ... | head -1`: the job stops at its next print; its exit status is 141 (a closed pipe, as a
    shell reports it), never 0, and nothing more is printed."""
    argv = ["prepare", "--data.source", str(corpus_dir), "--data.tokenizer", "char", "--out", str(tmp_path / "d")]
    proc = subprocess.Popen([sys.executable, "-m", "arlm", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b""


def test_a_file_size_limit_is_one_line_and_keeps_what_was_prepared(tmp_path):
    """Under `ulimit -f` (RLIMIT_FSIZE: Python ignores SIGXFSZ, so the write fails with EFBIG) a prepare stops in one
    line, exit 2; prepared data already there stay as they were and no temporary is left."""
    import os
    import resource

    corpus = write_corpus(tmp_path / "corpus", n_docs=400)
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus))
    out = tmp_path / "data"
    assert run_cli("prepare", "--preset", str(preset), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "arlm", "prepare", "--preset", str(preset), "--out", str(out), "--overwrite"]
    done = subprocess.run(
        [*command, "--data.lowercase", "true"], env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: a file reached the largest size this process may write") and "ulimit -f" in last
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data", "tiny.yaml"]


def test_python_m_arlm_loads_no_distributed_training_after_a_command_outside_torchrun():
    """`python -m arlm` imported torch.distributed's checkpointing after every command to find out it was not under
    torchrun: 0.75 s more for `python -m arlm generate` (3.9 s against 3.0 s for SmolLM2's first token and exit)."""
    code = (
        "import runpy, sys\n"
        "import arlm.cli\n"
        "arlm.cli.main = lambda: 0\n"
        "try:\n"
        "    runpy.run_module('arlm', run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    assert end.code == 0, end.code\n"
        "print('arlm.training.distributed' in sys.modules, 'torch.distributed.checkpoint' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
