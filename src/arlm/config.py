"""Typed run configuration: dataclasses, named YAML presets, strict loading and dotted overrides."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from arlm.errors import ArlmError
from arlm.values import coerce

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "quickstart"


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer; one class serves the GPT-2 and Llama flavours."""

    flavour: str = "gpt2"  # "gpt2": learned positions, LayerNorm, GELU | "llama": RoPE, RMSNorm, SwiGLU
    vocab_size: int = 0  # 0: taken from the tokenizer
    block_size: int = 128  # longest context (positions)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: n_head (multi-head); fewer: grouped-query attention (llama)
    d_model: int = 128
    d_ff: int | None = None  # None: 4*d_model (gpt2), 8/3*d_model rounded up to 64 (llama)
    bias: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention: str = "sdpa"  # "sdpa" | "naive"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to n_head without grouped-query attention)."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the MLP."""
        if self.d_ff:
            return self.d_ff
        if self.flavour == "llama":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    def validate(self) -> None:
        """Raise ArlmError on an impossible shape."""
        _choice("model.flavour", self.flavour, ("gpt2", "llama"))
        _choice("model.attention", self.attention, ("sdpa", "naive"))
        for name in ("block_size", "n_layer", "n_head", "d_model"):
            _at_least(f"model.{name}", getattr(self, name), 1)
        if self.block_size < 2:
            raise ArlmError(f"model.block_size must be at least 2 (an input and its next token), got {self.block_size}")
        for name in ("vocab_size", "d_ff", "n_kv_head"):
            _at_least(f"model.{name}", getattr(self, name) or 0, 0)
        for name in ("norm_eps", "rope_theta", "init_std"):
            _finite(f"model.{name}", getattr(self, name), low=0.0)
            if getattr(self, name) == 0:
                raise ArlmError(f"model.{name} must be above 0")
        if self.d_model % self.n_head:
            raise ArlmError(f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ArlmError(f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({self.kv_heads})")
        if self.flavour == "llama" and self.head_dim % 2:
            raise ArlmError(f"RoPE needs an even head width; d_model/n_head is {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ArlmError(f"model.dropout must be in [0, 1), got {self.dropout}")


MAX_VOCAB = 1 << 22  # data.vocab_size's ceiling: 4,194,304 ids, 16x Gemma's 262,144


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token shards and batches."""

    source: str = "builtin"  # builtin[:topics|:docstrings] | tinyshakespeare (named) | file | folder | glob | .jsonl
    text_field: str = "text"  # JSONL field holding the document text
    doc_separator: str = ""  # "": each file (JSONL: each record) is one document | blank: blank lines | a regex
    doc_max_chars: int = 0  # > 0: documents longer than this are cut (at their last line break) to this length
    encoding_errors: str = "strict"  # strict: refuse non-UTF-8 (names file and offset) | replace: U+FFFD
    unicode: str = "none"  # none | NFC | NFKC
    lowercase: bool = False
    strip_control: bool = False  # drop control/format characters other than newline and tab
    collapse_whitespace: bool = False  # runs of spaces/tabs -> one space; 3+ newlines -> 2
    split: str = "auto"  # auto | documents | contiguous
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 1337
    tokenizer: str = "bpe"  # char | word | bpe | path/to/tokenizer.json | path/to/tokenizer-dir
    vocab_size: int = 2048  # cap for word and bpe
    prepared_dir: str = ""  # "": <train.out_dir>/data
    mode: str = "packed"  # packed: documents joined with EOS into blocks | padded: one document a row
    pad_to: str = "longest"  # padded mode: "longest" in the batch | "block"
    document_mask: bool = False  # packed mode: attention never crosses a document boundary
    sampling: str = "random"  # random: random offsets (nanoGPT) | epoch: shuffled disjoint blocks
    format: str = "text"  # text | chat: JSONL of `messages` or prompt/completion, rendered by the chat template
    train_on: str = "assistant"  # chat: the loss on the assistant tokens only | all: on every token

    def validate(self) -> None:
        """Raise ArlmError on an impossible setting."""
        _choice("data.encoding_errors", self.encoding_errors, ("strict", "replace"))
        _choice("data.unicode", self.unicode, ("none", "NFC", "NFKC"))
        _choice("data.split", self.split, ("auto", "documents", "contiguous"))
        _choice("data.mode", self.mode, ("packed", "padded"))
        _choice("data.pad_to", self.pad_to, ("longest", "block"))
        _choice("data.sampling", self.sampling, ("random", "epoch"))
        _choice("data.format", self.format, ("text", "chat"))
        _choice("data.train_on", self.train_on, ("assistant", "all"))
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ArlmError("data.val_fraction and data.test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ArlmError("data.val_fraction + data.test_fraction must leave room for training text")
        _at_least("data.vocab_size", self.vocab_size, 1)
        if self.vocab_size > MAX_VOCAB:  # (tokenizers' BPE trainer reserves memory for every id: 70 GB for 1e9)
            raise ArlmError(f"data.vocab_size must be at most {MAX_VOCAB:,} (ids to train), got {self.vocab_size}")
        if self.tokenizer == "word" and self.vocab_size < 4:
            raise ArlmError(
                f"data.vocab_size {self.vocab_size} leaves the word tokenizer no word beside its 3 special tokens; "
                "give 4 or more"
            )
        if self.doc_max_chars < 0:
            raise ArlmError(f"data.doc_max_chars must be >= 0 (0: no limit), got {self.doc_max_chars}")


@dataclass
class LoRAConfig:
    """Low-rank adapters (train.lora): W x + (alpha / rank) B A x, only A and B trained; rank 0: off."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])  # attn | mlp | qkv, proj, up, down

    def validate(self) -> None:
        """Raise ArlmError on an impossible setting."""
        _at_least("train.lora.rank", self.rank, 0)
        _finite("train.lora.alpha", self.alpha, low=0.0)
        _finite("train.lora.dropout", self.dropout, low=0.0, high=0.99)
        for target in self.targets or [""]:
            if isinstance(target, str) and target.startswith("[") and target.endswith("]") and "," not in target:
                # (a bracketed value without a comma is one item on the command line, as --generate.stop '[INST]')
                raise ArlmError(f"train.lora.targets: one target is written without brackets ({target[1:-1]})")
            _choice("train.lora.targets", target, ("attn", "mlp", "qkv", "proj", "up", "down"))


@dataclass
class TrainConfig:
    """The optimisation loop: schedule, precision, evaluation, logging and checkpoints."""

    out_dir: str = "runs/quickstart"
    init: str = ""  # start from these weights (checkpoint, HF folder, GGUF, "smollm2")
    batch_size: int = 16  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step (divided by the world size under torchrun)
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100
    lr_decay_steps: int = 0  # 0: max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: off
    label_smoothing: float = 0.0
    dtype: str = "float32"  # float32 | bfloat16 | float16 (autocast on GPU; GradScaler for float16)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 1337
    threads: int = 0  # CPU threads; 0: PyTorch's default
    eval_interval: int = 250
    eval_at_start: bool = False  # evaluate before the first step (the baseline of a fine-tune)
    eval_batches: int = 20  # batches per split at each evaluation; 0: the whole split
    final_eval_batches: int = 100  # batches per split in the final report (evenly spaced); 0: the whole split
    log_interval: int = 10
    checkpoint_interval: int = 500  # 0: only at the end
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 5  # consecutive skipped steps before the run stops
    tensorboard: bool = False
    grad_norms: bool = False  # log gradient norms per layer and projection
    parallel: str = "ddp"  # under torchrun: ddp | fsdp
    peak_tflops: float = 0.0  # the device's dense peak for MFU; 0: from the table of known GPUs
    activation_checkpointing: bool = False
    distill_from: str = ""  # a teacher model: train on KL to its next-token distributions (arlm distill)
    distill_temperature: float = 1.0
    distill_alpha: float = 1.0  # weight of the KL term; 1 - alpha weighs the plain next-token NLL
    scheduled_sampling: float = 0.0  # final probability of feeding the model's own prediction (0: off)
    scheduled_sampling_warmup: int = 0  # steps over which that probability rises linearly from 0
    sample_tokens: int = 200  # tokens printed as a sample at the end; 0: none
    sample_prompt: str = ""
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def validate(self) -> None:
        """Raise ArlmError on an impossible setting."""
        _choice("train.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        for name in ("batch_size", "grad_accum", "max_steps", "log_interval", "eval_interval"):
            _at_least(f"train.{name}", getattr(self, name), 1)
        if not (math.isfinite(self.lr) and self.lr > 0):  # (one wording for 0, negatives and NaN)
            raise ArlmError(f"train.lr must be a finite number above 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ArlmError(f"need 0 <= train.min_lr <= train.lr (lr={self.lr}, min_lr={self.min_lr})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ArlmError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.keep_checkpoints < 1:
            raise ArlmError("train.keep_checkpoints must be at least 1")
        _at_least("train.max_nonfinite_steps", self.max_nonfinite_steps, 1)
        for name in TRAIN_COUNTS:
            _at_least(f"train.{name}", getattr(self, name), 0)
        for name, (low, high) in TRAIN_RANGES.items():
            _finite(f"train.{name}", getattr(self, name), low=low, high=high)
        if max(self.beta1, self.beta2) >= 1 or self.distill_temperature == 0:
            raise ArlmError("train.beta1 and train.beta2 must be below 1, and train.distill_temperature above 0")
        self.lora.validate()
        if self.lora.rank and not self.init:
            raise ArlmError("train.lora adapts a base model: set train.init (e.g. smollm2)")


TRAIN_COUNTS = (  # integers of TrainConfig where 0 is allowed (off, or "the default") and < 0 is not
    "warmup_steps",
    "lr_decay_steps",
    "threads",
    "eval_batches",
    "final_eval_batches",
    "checkpoint_interval",
    "scheduled_sampling_warmup",
    "sample_tokens",
)
TRAIN_RANGES = {  # floats of TrainConfig: finite, within [low, high] (None: unbounded)
    "lr": (0.0, None),
    "min_lr": (0.0, None),
    "weight_decay": (0.0, None),
    "beta1": (0.0, 1.0),
    "beta2": (0.0, 1.0),
    "grad_clip": (0.0, None),
    "peak_tflops": (0.0, None),
    "distill_temperature": (0.0, None),
    "distill_alpha": (0.0, 1.0),
    "scheduled_sampling": (0.0, 1.0),
}


Strategy = Literal["greedy", "sample", "beam", "speculative", "prompt-lookup"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)  # GenerationConfig.strategy's values
KvDtype = Literal["auto", "float32", "bfloat16"]
KV_DTYPES: tuple[str, ...] = typing.get_args(KvDtype)  # GenerationConfig.kv_dtype's values: the KV cache's dtype
MIN_TEMPERATURE = 1e-6  # the smallest positive temperature sampled at (below it, logits / T can pass float32's max)


@dataclass
class GenerationConfig:
    """How to decode: strategy, processors, stopping, beams and drafts."""

    strategy: Strategy = "sample"
    max_new_tokens: int = 200  # 0: the prompt comes back with no new tokens
    min_new_tokens: int = 0  # EOS is masked until this many tokens are generated
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 4
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    stop: list[str] = field(default_factory=list)  # stop strings
    stop_at_eos: bool = True
    seed: int | None = None
    num_draft_tokens: int = 4  # speculative: gamma
    adaptive_draft: bool = False
    prompt_lookup_ngram: int = 3  # prompt-lookup: longest n-gram to match
    lookup_first: bool = False  # speculative: prompt lookup's tokens where the context recurs, the draft's elsewhere
    compile: bool = False  # greedy/sample: a torch.compile'd one-token step (CUDA graphs on GPU)
    kv_dtype: KvDtype = "auto"  # the KV cache's; auto: the model's float dtype

    def validate(self) -> None:
        """Raise ArlmError on an impossible setting."""
        _choice("strategy", self.strategy, STRATEGIES)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ArlmError(f"{name} must be a finite number, got {getattr(self, name)}", param=name)
        if 0 < self.max_new_tokens < self.min_new_tokens:  # (max_new_tokens 0: the prompt back, whatever the min)
            raise ArlmError(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})")
        for name in ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "no_repeat_ngram_size"):
            if getattr(self, name) < 0:
                raise ArlmError(f"{name} must be >= 0, got {getattr(self, name)}", param=name)
        # (a prompt-lookup n-gram of 0 would never match: nothing drafted, silently)
        for name in ("num_beams", "num_return_sequences", "num_draft_tokens", "prompt_lookup_ngram"):
            if not getattr(self, name) >= 1:
                raise ArlmError(f"{name} must be >= 1, got {getattr(self, name)}", param=name)
        if 0 < self.temperature < MIN_TEMPERATURE:  # (logits / 1e-45 overflow float32: a NaN distribution)
            raise ArlmError(
                f"temperature {self.temperature:g} is too small to sample at; give 0 (greedy) or at least "
                f"{MIN_TEMPERATURE:g}",
                param="temperature",
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ArlmError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if not 0.0 <= self.min_p <= 1.0:
            raise ArlmError(f"min_p must be in [0, 1], got {self.min_p}", param="min_p")
        if self.repetition_penalty <= 0:
            raise ArlmError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}", param="repetition_penalty"
            )
        if self.lookup_first and self.strategy != "speculative":
            raise ArlmError(f"lookup_first goes with the speculative strategy (a draft model), not {self.strategy}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ArlmError(
                f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})"
            )
        sampling = self.strategy == "sample" and self.temperature > 0
        if self.num_return_sequences > 1 and not (sampling or self.strategy == "beam"):
            raise ArlmError(
                f"num_return_sequences {self.num_return_sequences} needs --strategy sample (temperature > 0) or "
                f"beam; {self.strategy} would return the same sequence each time"
            )
        if self.min_new_tokens and not self.stop_at_eos:  # (EOS ends nothing: there is no early end to mask)
            raise ArlmError(
                "min_new_tokens masks the EOS that would end the text early; with stop_at_eos false EOS ends nothing",
                param="min_new_tokens",
            )
        if any(s == "" for s in self.stop):
            raise ArlmError("a stop string must not be empty")
        if self.early_stopping not in (True, False, "never"):
            raise ArlmError(f"early_stopping must be true, false or never, got {self.early_stopping!r}")
        _choice("kv_dtype", self.kv_dtype, KV_DTYPES)


@dataclass
class RunConfig:
    """Everything a run needs; what a preset file and config.json hold."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerationConfig = field(default_factory=GenerationConfig)

    def validate(self) -> RunConfig:
        """Validate every section and return self."""
        for section in (self.model, self.data, self.train, self.generate):
            section.validate()
        if self.train.init and self.data.tokenizer in ("char", "word", "bpe"):  # a new one never fits init's model
            raise ArlmError(f"train.init's model has its own tokenizer: set data.tokenizer {self.train.init}")
        return self


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ArlmError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ArlmError(f"{name} must be {'a positive integer' if low == 1 else '0 or more'}, got {value}")


def _finite(name: str, value: float, *, low: float, high: float | None = None) -> None:
    """Refuse NaN, infinities, and values outside [low, high]."""
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        limit = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise ArlmError(f"{name} must be a finite number {limit}, got {value}")


# ---------------------------------------------------------------- loading, overrides, presets


def preset_names() -> list[str]:
    """Names of the presets shipped with arlm."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a preset by name (configs/NAME.yaml) or by path to a YAML file, as a plain dict."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ArlmError(f"unknown preset {name_or_path!r}; known presets: {', '.join(preset_names())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ArlmError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ArlmError(f"{path} must hold a mapping of sections (model, data, train, generate)")
    return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ['--train.lr', '3e-4', '--model.n_layer=6'] into {'train': {'lr': '3e-4'}, 'model': {...}}."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ArlmError(f"unexpected argument {arg!r}; overrides look like --train.lr 3e-4")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ArlmError(f"override {arg} needs a value")
            i += 1
            value = args[i]
        *path, name = key.replace("-", "_").split(".")
        target = nested
        for part in path:  # train.lora.rank -> {"train": {"lora": {"rank": ...}}}
            target = target.setdefault(part, {})
        target[name] = value
        i += 1
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge two nested dicts; values in extra win."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts, refusing unknown sections or keys and coercing types."""
    sections = {f.name: f for f in fields(RunConfig)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ArlmError(f"unknown config section {sorted(unknown)[0]!r}; known: {', '.join(sections)}")
    built = {name: _build_section(name, f.default_factory, raw.get(name) or {}) for name, f in sections.items()}
    return RunConfig(**built)


def _build_section(section: str, factory: Any, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ArlmError(f"config section {section!r} must be a mapping")
    obj = factory()
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ArlmError(f"unknown config key {section}.{key}; known keys: {', '.join(sorted(known))}")
        if dataclasses.is_dataclass(hints[key]):  # a nested section, e.g. train.lora
            setattr(obj, key, _build_section(f"{section}.{key}", hints[key], value or {}))
            continue
        setattr(obj, key, coerce(value, hints[key], f"{section}.{key}"))
    return obj


def build_config(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset, apply dotted command-line overrides, validate."""
    raw = merge(load_preset(preset), parse_overrides(overrides or []))
    return config_from_dict(raw).validate()


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict of a RunConfig (JSON/YAML ready)."""
    return asdict(config)
