"""`arlm generate`'s text side: a streamed single prompt prints exactly the non-streamed text, cut at a stop."""

import argparse
import dataclasses
import io
import json
import random

import pytest
import torch

from arlm.cli import main
from arlm.commands.decoding import CPU_COMPILE_NOTE, Streamer, format_stats, note_compile
from arlm.commands.generation_flags import FLAG_HELP, add_generation_flags, generation_options
from arlm.config import GenerationConfig
from arlm.decoding.stops import cut_at_stop, stop_checker
from arlm.errors import ArlmError
from tests.helpers import optional_module, tiny_base

PIECES = ["a", "b", "le", " s", "pa", "ce", "l", "e", " ", "\n", "ab"]


class PieceTokenizer:
    """A stand-in tokenizer: id i decodes to PIECES[i] (several characters per token, as in BPE)."""

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids)

    def special_texts(self):
        return []


def _stream(ids: list[int], stops: list[str]) -> tuple[str, list[int]]:
    """Feed ids as generate() would (ending the row when the stop check fires); the printed text and the ids."""
    tok, out = PieceTokenizer(), io.StringIO()
    streamer, should_stop = Streamer(tok, stops, stream=out, prefix="P:"), stop_checker(tok, stops)
    fed = []
    for i in ids:
        fed.append(i)
        streamer(torch.tensor([i]))
        if should_stop and should_stop(0, fed):
            break
    streamer.finish()
    return out.getvalue(), fed


def test_a_stop_string_split_across_tokens_is_never_printed():
    ids = [PIECES.index(p) for p in ["l", "a", "le", " s", "pa", "ce"]]
    printed, _ = _stream(ids, ["le s"])
    assert printed == "P:la\n"  # not "P:lale s": the text that could start "le s" waited


@pytest.mark.parametrize("seed", range(40))
def test_streamed_text_equals_the_whole_text_cut_at_the_stop(seed):
    rng = random.Random(seed)  # seeded by value
    ids = [rng.randrange(len(PIECES)) for _ in range(30)]
    stops = rng.sample(["le s", "ab", "a", "e\n", "space", "b l", "zz"], k=rng.randint(1, 3))
    printed, fed = _stream(ids, stops)
    assert printed == "P:" + cut_at_stop(PieceTokenizer().decode(fed), stops) + "\n"


def test_without_stops_everything_is_printed_as_it_comes():
    out = io.StringIO()
    streamer = Streamer(PieceTokenizer(), [], stream=out, prefix="P:")
    assert out.getvalue() == ""  # the prompt waits for the first token (errors come before any output)
    streamer(torch.tensor([2]))
    assert out.getvalue() == "P:le"
    streamer.finish()
    assert out.getvalue() == "P:le\n"


def test_the_stats_line_gives_the_rate_after_the_prompt_when_there_was_one():
    stats = {"new_tokens": 40, "seconds": 2.0, "tokens_per_s": 20.0, "prompt_seconds": 1.0, "decode_tokens_per_s": 40.0}
    line = format_stats(stats)
    assert line.startswith("40 tokens in 2.00s (20.0 tokens/s)") and "40.0 tokens/s after the prompt's 1.00s" in line
    assert "after the prompt" not in format_stats({**stats, "prompt_seconds": 0.0})


def test_the_stats_line_says_how_many_were_drafted_and_when_none_were():
    """A speculative run's acceptance is of the tokens drafted; adaptive drafting may draft none (not 0% accepted)."""
    stats = {"new_tokens": 40, "seconds": 1.0, "tokens_per_s": 40.0, "target_forwards": 9, "proposed": 33}
    line = format_stats({**stats, "accepted": 31, "acceptance_rate": 31 / 33, "tokens_per_target_forward": 40 / 9})
    assert "acceptance 93.94% of 33 drafted, 4.44 tokens per target forward, 9 target forwards" in line
    none = {**stats, "proposed": 0, "accepted": 0, "acceptance_rate": 0.0, "target_forwards": 40}
    line = format_stats({**none, "tokens_per_target_forward": 1.0})
    assert "nothing drafted" in line and "acceptance" not in line and "40 target forwards" in line


def test_a_draft_of_a_shorter_context_is_said_and_the_text_passes_it(tmp_path, capsys):
    """A distilled draft of context 16 beside a target of 96: a text longer than 16 tokens is decoded (it raised a
    traceback), the target alone past the draft's context, as one note on stderr says; the output is greedy's."""
    target, draft = tiny_base(tmp_path / "target"), tiny_base(tmp_path / "draft", block_size=16, seed=1)
    argv = ["generate", str(target), "--prompt", "hello there, " * 2, "--max-new-tokens", "12", "--temperature", "0"]
    assert main(argv) == 0
    greedy = capsys.readouterr().out
    assert main([*argv, "--strategy", "speculative", "--draft", str(draft)]) == 0
    out = capsys.readouterr()
    assert out.out == greedy
    assert "note: the draft's context is 16 tokens, " in out.err
    assert "'s 96: past 16 tokens of text it drafts nothing" in out.err


def test_a_damaged_newest_checkpoint_is_warned_about_on_stderr_not_in_the_text(tmp_path, capsys):
    """The warning that an earlier checkpoint is used was printed on stdout, ahead of the generated text."""
    import shutil

    run = tmp_path / "run"
    first = tiny_base(run / "checkpoints" / "step-00000010")
    newest = run / "checkpoints" / "step-00000020"
    shutil.copytree(first, newest)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    argv = ["generate", str(run), "--prompt", "hello", "--max-new-tokens", "3", "--temperature", "0"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert main(["generate", str(first), *argv[2:]]) == 0
    assert out.out == capsys.readouterr().out  # the text alone, as the intact checkpoint gives it
    assert "warning: checkpoint" in out.err and "step-00000020" in out.err and "using an earlier checkpoint" in out.err


def test_a_prompt_read_partly_as_unk_is_said(tmp_path, capsys):
    """A char model's prompt with characters outside its vocabulary: the prompt is printed as typed and decoding
    drops the <unk>, so only a note says what the model saw."""
    model = tiny_base(tmp_path / "m")
    argv = ["generate", str(model), "--max-new-tokens", "2", "--temperature", "0", "--prompt"]
    assert main([*argv, "hello Ωμέγα"]) == 0
    assert "note: the tokenizer read 5 piece(s) of the prompt as <unk>" in capsys.readouterr().err
    assert main([*argv, "hello"]) == 0
    assert "<unk>" not in capsys.readouterr().err


def test_a_refused_compile_is_one_line_without_the_note_of_a_run(tmp_path, capsys):
    """The note that a compiled CPU step is slower came before the refusal: two lines for a command that never ran."""
    model = tiny_base(tmp_path / "m")  # (context 96)
    argv = ["generate", str(model), "--prompt", "hello", "--temperature", "0", "--compile", "--max-new-tokens", "200"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: compile needs prompt + max_new_tokens")


def test_compile_on_the_cpu_is_said_to_be_slower(capsys):
    """--compile still runs on the CPU, with one line on stderr saying the eager step there is faster."""
    note_compile(GenerationConfig(compile=True), torch.device("cpu"))
    assert capsys.readouterr().err == CPU_COMPILE_NOTE + "\n"
    note_compile(GenerationConfig(compile=False), torch.device("cpu"))
    note_compile(GenerationConfig(compile=True), torch.device("meta"))  # not the CPU
    assert capsys.readouterr().err == ""


def test_every_generation_flag_says_what_it_does():
    """--help gives each GenerationConfig field a line of its own, then its default (a new field needs one)."""
    assert set(FLAG_HELP) == {f.name for f in dataclasses.fields(GenerationConfig)}
    parser = argparse.ArgumentParser()
    add_generation_flags(parser)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["gen_adaptive_draft"] == FLAG_HELP["adaptive_draft"] + " (default False)"
    assert helps["gen_stop"] == FLAG_HELP["stop"] + " (default [])"


def test_a_yes_no_flag_alone_means_true_and_takes_a_value_too():
    """--adaptive-draft --temperature 0 (the README's line) parses: a yes/no field's flag alone is true."""
    parser = argparse.ArgumentParser()
    add_generation_flags(parser)
    options = generation_options(parser.parse_args(["--adaptive-draft", "--temperature", "0", "--lookup-first", "no"]))
    assert options == {"adaptive_draft": True, "temperature": 0.0, "lookup_first": False}
    assert generation_options(parser.parse_args(["--stop-at-eos", "false", "--compile"])) == {
        "stop_at_eos": False,
        "compile": True,
    }


@pytest.mark.slow
@pytest.mark.real_model
def test_show_drafts_prints_the_text_before_the_stop_string(capsys):
    args = ["generate", "smollm2", "--prompt", "Once upon a time", "--max-new-tokens", "40", "--temperature", "0"]
    args += ["--strategy", "prompt-lookup", "--stop", "skyscrapers"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--show-drafts"]) == 0
    assert capsys.readouterr().out.replace("[", "").replace("]", "") == plain


@pytest.fixture(scope="module")
def q4_file(tmp_path_factory):
    """A tiny tied Llama written as SmolLM2's file is: Q4_1 layers, a Q8_0 embedding that is also the head."""
    optional_module("gguf")
    from tests.interop.gguf_files import TINY_MERGES, layer_types, tied_llama, write_tiny_llama

    model, tokens = tied_llama()
    path = tmp_path_factory.mktemp("q4") / "q4.gguf"
    return str(write_tiny_llama(path, model, tokens, TINY_MERGES, types=layer_types(model, "Q8_0", "Q4_1")))


def test_generate_runs_a_file_at_its_own_precision_unless_told(q4_file, monkeypatch):
    """No --dtype: the Q4_1 file's int4 model (auto, its layers the file's blocks); --dtype float32 when told."""
    from arlm.interop import loading
    from arlm.model import native
    from arlm.model.quant import Int4Linear

    if not native.available():
        pytest.skip("int4 keeps the file's blocks with arlm's kernels only")
    loaded, load = [], loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    argv = ["generate", q4_file, "--prompt", "the", "--max-new-tokens", "4"]
    assert main(argv) == 0 and main([*argv, "--dtype", "float32"]) == 0
    assert [one.dtype for one in loaded] == ["int4", "float32"]
    assert sum(isinstance(m, Int4Linear) for m in loaded[0].model.modules()) == 4 * 2


def test_a_self_draft_at_the_targets_own_dtype_is_refused(q4_file, capsys):
    """--draft self:int4 on a target auto loaded at int4 would draft with the target itself: one line, exit 2."""
    from arlm.model import native

    if not native.available():
        pytest.skip("auto is float32 where arlm's kernels are not built")
    argv = ["generate", q4_file, "--prompt", "the", "--strategy", "speculative", "--draft", "self:int4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --draft self:int4 would draft with the target itself" in err
    assert "draft at another precision (e.g. --draft self:int8) or give the target another --dtype" in err
    assert main([*argv, "--dtype", "float32", "--max-new-tokens", "4", "--temperature", "0"]) == 0


@pytest.mark.parametrize("dtype", ["int4", "mixed"])
def test_a_cpu_only_self_draft_beside_a_gpu_target_names_the_draft(dtype):
    """--draft self:int4 with a target on CUDA (--device auto on a GPU machine, --dtype float32) was refused as
    '--dtype int4 runs on the CPU only', a flag the user did not give: the refusal names the draft."""
    from types import SimpleNamespace

    from arlm.commands.decoding import load_draft

    target = SimpleNamespace(dtype="float32")
    with pytest.raises(ArlmError, match=rf"^--draft self:{dtype} drafts on the CPU only .* runs on cuda; use --device"):
        load_draft(f"self:{dtype}", target, "smollm2", torch.device("cuda"))


@pytest.mark.slow
@pytest.mark.real_model
def test_json_keeps_the_output_to_any_object_or_to_a_schema_file(tmp_path, capsys):
    prompt = "A person as JSON with name and age: "
    args = ["generate", "smollm2", "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "80"]
    assert main([*args, "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out.removeprefix(prompt)), dict)
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    (tmp_path / "age.json").write_text(json.dumps({**schema, "additionalProperties": False}))
    assert main([*args, "--json", str(tmp_path / "age.json")]) == 0
    assert set(json.loads(capsys.readouterr().out.removeprefix(prompt))) == {"age"}
    assert main([*args, "--json", "[1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --json '[1': not a JSON schema file or text")
    assert main([*args, "--json", "--strategy", "beam"]) == 2
    assert "JSON output is decoded by greedy decoding or sampling, not beam" in capsys.readouterr().err


def test_a_refusal_names_a_given_setting_by_its_flag_and_one_from_the_run_by_its_field():
    """Only what was given as a flag is spelled as one: a value from the run's config.json keeps its field's name
    (the review found `--stop-at-eos false` named to a user who gave no flag)."""
    from arlm.commands.generation_flags import as_flags

    message = "min_new_tokens (5) must be <= max_new_tokens (2)"
    assert as_flags(message, {"min_new_tokens"}) == "--min-new-tokens (5) must be <= max_new_tokens (2)"
    assert as_flags(message, set()) == message
    assert as_flags("temperature must be >= 0", {"temperature"}, "temperature") == "--temperature must be >= 0"
    assert as_flags("temperature must be >= 0", set(), "temperature") == "temperature must be >= 0"
