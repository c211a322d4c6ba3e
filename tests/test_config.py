import math

import pytest

from arlm.config import (
    GenerationConfig,
    build_config,
    coerce,
    config_from_dict,
    config_to_dict,
    parse_overrides,
    preset_names,
)
from arlm.errors import ArlmError


def test_every_preset_loads_and_validates():
    assert {"quickstart", "shakespeare-char-cpu"} <= set(preset_names())
    for name in preset_names():
        config = build_config(name)
        assert config_from_dict(config_to_dict(config)) == config


def test_overrides_both_spellings_and_types():
    config = build_config(
        "quickstart",
        [
            "--train.lr",
            "3e-4",
            "--model.n_layer=6",
            "--data.lowercase",
            "true",
            "--model.n_kv_head",
            "none",
            "--generate.stop",
            "END",
        ],
    )
    assert config.train.lr == 3e-4 and config.model.n_layer == 6 and config.data.lowercase is True
    assert config.model.n_kv_head is None and config.generate.stop == ["END"]
    assert parse_overrides(["--train.max-steps", "5"]) == {"train": {"max_steps": "5"}}


def test_a_list_on_the_command_line():
    several = build_config("smollm2-sft", ["--train.lora.targets", "[qkv, down]", "--generate.stop", "[INST]"])
    assert several.train.lora.targets == ["qkv", "down"] and several.generate.stop == ["[INST]"]  # one item: as given
    with pytest.raises(ArlmError, match=r"one target is written without brackets \(qkv\)"):
        build_config("smollm2-sft", ["--train.lora.targets", "[qkv]"])
    assert build_config("quickstart", ["--generate.stop", "[a, b]"]).generate.stop == ["a", "b"]


def test_strict_loading():
    with pytest.raises(ArlmError, match="unknown config key model.layers"):
        config_from_dict({"model": {"layers": 3}})
    with pytest.raises(ArlmError, match="unknown config section 'optim'"):
        config_from_dict({"optim": {}})
    with pytest.raises(ArlmError, match="expected int"):
        config_from_dict({"model": {"n_layer": 2.5}})
    with pytest.raises(ArlmError, match="overrides look like"):
        parse_overrides(["lr=3"])
    with pytest.raises(ArlmError, match="needs a value"):
        parse_overrides(["--train.lr"])


def test_bool_or_string_early_stopping():
    assert coerce("never", bool | str, "x") == "never"
    assert coerce("true", bool | str, "x") is True
    with pytest.raises(ArlmError, match="early_stopping"):
        GenerationConfig(early_stopping="sometimes").validate()


def test_validation_catches_impossible_shapes():
    with pytest.raises(ArlmError, match="divisible"):
        build_config("quickstart", ["--model.d_model", "100", "--model.n_head", "3"])
    with pytest.raises(ArlmError, match="multiple of model.n_kv_head"):
        build_config("quickstart", ["--model.n_kv_head", "3"])
    with pytest.raises(ArlmError, match="val_fraction"):
        build_config("quickstart", ["--data.val_fraction", "0.6", "--data.test_fraction", "0.5"])
    with pytest.raises(ArlmError, match="^data.vocab_size must be at most 4,194,304 .ids to train., got 1000000000$"):
        build_config("quickstart", ["--data.vocab_size", "1000000000"])  # (BPE's trainer asked for 70 GB, aborted)
    with pytest.raises(ArlmError, match="^data.vocab_size 3 leaves the word tokenizer no word beside its 3 special"):
        build_config("quickstart", ["--data.tokenizer", "word", "--data.vocab_size", "3"])
    build_config("quickstart", ["--data.tokenizer", "word", "--data.vocab_size", "4"])


def test_a_temperature_too_small_to_sample_at_is_refused():
    from arlm.config import GenerationConfig

    with pytest.raises(ArlmError, match=r"^temperature 1e-45 is too small to sample at; give 0 \(greedy\) or at least"):
        GenerationConfig(strategy="sample", temperature=1e-45).validate()
    GenerationConfig(strategy="sample", temperature=1e-6).validate()
    GenerationConfig(strategy="sample", temperature=0.0).validate()


def test_literal_values_are_checked():
    from typing import Literal

    assert coerce("beam", Literal["greedy", "beam"], "x") == "beam"
    assert coerce("2", Literal[1, 2], "x") == 2
    assert (
        coerce("never", bool | Literal["never"], "x") == "never"
        and coerce("off", bool | Literal["never"], "x") is False
    )
    with pytest.raises(ArlmError, match="x must be one of greedy, beam; got 'bem'"):
        coerce("bem", Literal["greedy", "beam"], "x")
    with pytest.raises(ArlmError, match="generate.strategy must be one of"):
        config_from_dict({"generate": {"strategy": "gready"}})
    with pytest.raises(ArlmError, match="^x: cannot read 'maybe' as true or false or 'never'$"):
        coerce("maybe", bool | Literal["never"], "x")
    with pytest.raises(ArlmError, match="^x: cannot read 'a' as int or none$"):
        coerce("a", int | None, "x")


@pytest.mark.parametrize("name", ["temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_decoding_settings_are_finite(name, value):
    with pytest.raises(ArlmError, match=f"^{name} must be a finite number"):
        GenerationConfig(**{name: value}).validate()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_learning_rate_is_refused_in_one_wording(value):
    with pytest.raises(ArlmError, match=f"^train.lr must be a finite number above 0, got -?{value.lstrip('-')}"):
        build_config("quickstart", ["--train.lr", value])


def test_min_new_tokens_with_stop_at_eos_false_is_refused_naming_it():
    """It did nothing there (the EOS came out as the 8th token all the same), silently."""
    GenerationConfig(min_new_tokens=3, stop_at_eos=True).validate()
    with pytest.raises(ArlmError, match="with stop_at_eos false EOS ends nothing") as caught:
        GenerationConfig(min_new_tokens=3, stop_at_eos=False).validate()
    assert caught.value.param == "min_new_tokens"


def test_min_new_tokens_fit_under_max_new_tokens():
    GenerationConfig(min_new_tokens=5, max_new_tokens=5).validate()
    with pytest.raises(ArlmError, match=r"min_new_tokens \(6\) must be <= max_new_tokens \(5\)"):
        GenerationConfig(min_new_tokens=6, max_new_tokens=5).validate()
    with pytest.raises(ArlmError, match="generate.early_stopping"):
        build_config("quickstart", ["--generate.early_stopping", "sometimes"])


def test_generation_options_refused_with_one_line():
    with pytest.raises(ArlmError, match="stop string must not be empty"):
        GenerationConfig(stop=[""]).validate()
    with pytest.raises(ArlmError, match="num_return_sequences 2 needs"):
        GenerationConfig(strategy="greedy", num_return_sequences=2).validate()
    with pytest.raises(ArlmError, match="num_return_sequences 2 needs"):
        GenerationConfig(strategy="sample", temperature=0, num_return_sequences=2).validate()
    with pytest.raises(ArlmError, match="min_new_tokens must be >= 0"):
        GenerationConfig(min_new_tokens=-1).validate()
    with pytest.raises(ArlmError, match="prompt_lookup_ngram must be >= 1, got 0"):
        GenerationConfig(strategy="prompt-lookup", prompt_lookup_ngram=0).validate()
    with pytest.raises(ArlmError, match="no_repeat_ngram_size must be >= 0"):
        GenerationConfig(no_repeat_ngram_size=-2).validate()
    GenerationConfig(strategy="sample", num_return_sequences=2).validate()
    GenerationConfig(max_new_tokens=0, min_new_tokens=3).validate()


def test_a_base_model_is_never_paired_with_a_new_tokenizer():
    with pytest.raises(ArlmError, match="train.init's model has its own tokenizer: set data.tokenizer smollm2"):
        build_config("quickstart", ["--train.init", "smollm2"])
    assert build_config("quickstart", ["--train.init", "smollm2", "--data.tokenizer", "smollm2"]).train.init
