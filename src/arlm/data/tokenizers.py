"""Tokenizers: character, word, byte-level BPE (Hugging Face `tokenizers`) and any tokenizer.json."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from arlm.errors import ArlmError

EOS = "<|endoftext|>"  # ends every document; also serves as BOS (GPT-2 convention)
PAD = "<|pad|>"
UNK = "<|unk|>"
META_FILE = "arlm_tokenizer.json"
UNKNOWN_BYTES = -(1 << 40)  # token_bytes of <unk>: the text it replaced is of any length; a sum holding it is < 0
_WORD = re.compile(r"\w+|[^\w\s]|\s+")  # words, single punctuation marks, whitespace runs: lossless
_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
# GPT-2's byte-level alphabet: a printable byte is its own symbol, the others (controls, space, ...) 256, 257, ...
_BYTE_OF_SYMBOL = {
    chr(b if b in _PRINTABLE else 256 + [x for x in range(256) if x not in _PRINTABLE].index(b)): b for b in range(256)
}
# normalizer / pre-tokenizer steps that treat the start or end of each input specially
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens (its byte fallback)
_EDGE_STEP = re.compile(r'"type": "(Prepend|Strip)"|"prepend_scheme": "(always|first)"|"add_prefix_space": true')


class Tokenizer:
    """The contract every tokenizer meets: encode/decode, special ids, save/load, a fingerprint."""

    kind: str = ""
    chat_template: str | None = None  # Jinja template of an instruct model (transformers' convention)
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None

    @property
    def vocab_size(self) -> int:
        """Number of ids (the model's embedding rows must be at least this)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Text to ids, without special tokens."""
        raise NotImplementedError

    def encode_literally(self, text: str) -> list[int]:
        """Text to ids with a special token's text in it read as text, not as that token (a chat message's
        content, as OpenAI's API reads it)."""
        return self.encode(text)

    def special_texts(self) -> list[str]:
        """The texts that encode() reads as special tokens."""
        return []

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids to text; special tokens are skipped unless skip_special is False."""
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """The surface form of one id, for reports."""
        raise NotImplementedError

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (its text's UTF-8 here; byte-level tokenizers give a character's parts)."""
        return self.token_text(token_id).encode("utf-8")

    def piece_label(self, token_id: int) -> str:
        """One id's text for display: the bytes of a character it holds only part of as <0xNN> (as llama.cpp
        names byte tokens), where token_text shows U+FFFD."""
        text = self.piece_bytes(token_id).decode("utf-8", errors="surrogateescape")  # a stray byte b: U+DC00 + b
        return "".join(f"<0x{ord(ch) - 0xDC00:02X}>" if "\udc80" <= ch <= "\udcff" else ch for ch in text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode a corpus's texts (parallel where the backend allows; special texts read as encode_literally)."""
        return [self.encode_literally(t) for t in texts]

    def encodes_pieces_exactly(self) -> bool:
        """Whether a text cut at pieces.safe_cut places encodes piece by piece to the ids of the whole."""
        return True

    def token_bytes(self) -> np.ndarray:
        """(V,) UTF-8 bytes each id stands for, for bits per byte: 0 for a special token, UNKNOWN_BYTES for an <unk>
        of its own (bits per byte over text holding one is unknown, not a figure over the other tokens' bytes)."""
        specials = self.special_ids()
        table = np.array(
            [0 if i in specials else len(self.token_text(i).encode("utf-8")) for i in range(self.vocab_size)],
            dtype=np.int64,
        )
        if self.own_unk_id() is not None:
            table[self.unk_id] = UNKNOWN_BYTES
        return table

    def own_unk_id(self) -> int | None:
        """The id of an <unk> of its own, which only text outside the vocabulary reads as (not also BOS, EOS or PAD,
        as SmolLM2's <|endoftext|> is): None where there is none."""
        shared = {self.bos_id, self.eos_id, self.pad_id}
        return self.unk_id if self.unk_id is not None and self.unk_id not in shared else None

    def special_ids(self) -> set[int]:
        """Ids of the special tokens."""
        return {i for i in (self.bos_id, self.eos_id, self.pad_id, self.unk_id) if i is not None}

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into a directory (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_payload(directory)
        meta = {
            "kind": self.kind,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "vocab_size": self.vocab_size,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def fingerprint(self) -> str:
        """A short hash of the vocabulary and special ids; two tokenizers match when fingerprints do."""
        payload = self._canonical() + json.dumps([self.bos_id, self.eos_id, self.pad_id, self.unk_id])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def _save_payload(self, directory: Path) -> None:
        raise NotImplementedError

    def _canonical(self) -> str:
        raise NotImplementedError


class VocabTokenizer(Tokenizer):
    """Character or word tokenizer over an explicit vocabulary; specials first, then symbols."""

    def __init__(self, kind: str, vocab: list[str]) -> None:
        self.kind = kind
        self.vocab = list(vocab)
        self.stoi = {s: i for i, s in enumerate(self.vocab)}
        self.eos_id = self.bos_id = self.stoi[EOS]
        self.pad_id = self.stoi[PAD]
        self.unk_id = self.stoi[UNK]

    @classmethod
    def train(cls, kind: str, texts: Iterable[str], vocab_size: int) -> VocabTokenizer:
        """Build a vocabulary: every character (char), or the most frequent vocab_size words (word)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text if kind == "char" else _WORD.findall(text))
        specials = [EOS, PAD, UNK]
        if kind == "char":
            symbols = sorted(counts)
        else:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            symbols = [s for s, _ in ranked[: max(vocab_size - len(specials), 0)]]
        return cls(kind, specials + [s for s in symbols if s not in specials])

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        """Text to symbols (characters, or words/punctuation/whitespace runs)."""
        return list(text) if self.kind == "char" else _WORD.findall(text)

    def encode(self, text: str) -> list[int]:
        """Text to ids; symbols outside the vocabulary become the unknown id."""
        unk = self.unk_id
        return [self.stoi.get(s, unk) for s in self.split(text)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids to text, skipping special tokens unless skip_special is False."""
        specials = self.special_ids() if skip_special else set()
        return "".join(self.vocab[i] for i in ids if i not in specials)

    def token_text(self, token_id: int) -> str:
        """The symbol of one id."""
        return self.vocab[token_id]

    def _save_payload(self, directory: Path) -> None:
        (directory / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    def _canonical(self) -> str:
        return self.kind + json.dumps(self.vocab, ensure_ascii=False)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (byte-level BPE trained here, or any tokenizer.json)."""

    def __init__(
        self,
        backend: Backend,
        *,
        kind: str = "hf",
        bos: str | None = None,
        eos: str | None = None,
        pad: str | None = None,
        unk: str | None = None,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            backend.token_to_id(t) if t else None for t in (bos, eos, pad, unk)
        )

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> HFTokenizer:
        """Train a byte-level BPE (GPT-2 style pre-tokenization) on the given texts."""
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 2:
            raise ArlmError(f"a byte-level BPE needs data.vocab_size >= {len(alphabet) + 2}, got {vocab_size}")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, kind="bpe", bos=EOS, eos=EOS, pad=PAD)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text to ids without added BOS/EOS."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_literally(self, text: str) -> list[int]:
        """Text to ids, special tokens' texts read as text: a copy of the backend told so once (the flag is the
        backend's own, so setting it on the shared one would race other threads' encode())."""
        return self._literal_backend().encode(text, add_special_tokens=False).ids

    def _literal_backend(self) -> Backend:
        if not hasattr(self, "_literal"):
            self._literal = Backend.from_str(self.backend.to_str())
            self._literal.encode_special_tokens = True
        return self._literal

    def special_texts(self) -> list[str]:
        """The added tokens marked special, which encode() reads as their ids wherever their text appears."""
        return [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode a corpus's texts in parallel (Rust threads), without character offsets where tokenizers >= 0.20;
        a special token's text in them is read as text (encode_literally: a corpus's `<|endoftext|>` is data)."""
        backend = self._literal_backend()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encodes_pieces_exactly(self) -> bool:
        """False when the normalizer or pre-tokenizer adds or strips text at the start or end of every
        input (Prepend, Strip, a prefix space, SentencePiece's Metaspace prefix): then each piece would."""
        config = json.loads(self.backend.to_str())
        steps = json.dumps([config.get("normalizer"), config.get("pre_tokenizer")])
        return not _EDGE_STEP.search(steps)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids to text, skipping special tokens unless skip_special is False."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        """Readable text of one token (byte-level symbols decoded)."""
        return self.backend.decode([token_id], skip_special_tokens=False)

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for, also where they are part of a character: byte-level BPE's symbols (one of
        GPT-2's alphabet per byte); SentencePiece's byte tokens (`<0xE6>`: that byte, where its decoder falls back
        to bytes) and its `▁` (a space, which decoding one token alone strips); an added token's text."""
        symbols = self.backend.id_to_token(token_id) or ""
        decoder = self._decoder()
        if token_id in self._added():
            return super().piece_bytes(token_id)
        if '"ByteLevel"' in decoder:
            return bytes(_BYTE_OF_SYMBOL[c] for c in symbols)
        if '"ByteFallback"' in decoder and (byte := _BYTE_TOKEN.fullmatch(symbols)):
            return bytes([int(byte[1], 16)])
        if '"Metaspace"' in decoder or '"\u2581"' in decoder:  # (SentencePiece's word start, as a Replace)
            return symbols.replace("\u2581", " ").encode("utf-8")
        return super().piece_bytes(token_id)

    def _decoder(self) -> str:
        """The backend's decoder, as JSON (what piece_bytes reads its tokens by)."""
        if not hasattr(self, "_decoder_json"):
            self._decoder_json = json.dumps(json.loads(self.backend.to_str()).get("decoder"), ensure_ascii=False)
        return self._decoder_json

    def _added(self) -> set[int]:
        """The ids of the added tokens (special or not)."""
        if not hasattr(self, "_added_ids"):
            self._added_ids = set(self.backend.get_added_tokens_decoder())
        return self._added_ids

    def token_bytes(self) -> np.ndarray:
        """(V,) bytes per id (piece_bytes: exact for byte-level BPE and SentencePiece's layouts), 0 for added tokens,
        UNKNOWN_BYTES for an <unk> of its own where text can read as one (not through bytes: byte-level, fallback)."""
        added = self._added()
        table = np.array(
            [0 if i in added else len(self.piece_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64
        )
        through_bytes = '"ByteLevel"' in self._decoder() or '"ByteFallback"' in self._decoder()
        if (unk := self.own_unk_id()) is not None and not through_bytes:
            table[unk] = UNKNOWN_BYTES
        return table

    def _save_payload(self, directory: Path) -> None:
        self.backend.save(str(directory / "tokenizer.json"))
        names = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id, "unk_token": self.unk_id}
        config = {k: self.backend.id_to_token(v) for k, v in names.items() if v is not None}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def _canonical(self) -> str:
        return self.backend.to_str()


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int, resolve: Callable[[str], Tokenizer] | None = None
) -> Tokenizer:
    """Train a tokenizer of the given kind (char | word | bpe) on a stream of texts, or load the one `kind` names
    with `resolve` (the texts are then not read; default load_tokenizer: files and folders,
    arlm.interop.loading.load_tokenizer also takes models)."""
    if kind in ("char", "word"):
        return VocabTokenizer.train(kind, texts, vocab_size)
    if kind == "bpe":
        return HFTokenizer.train_bpe(texts, vocab_size)
    return (resolve or load_tokenizer)(kind)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from files: a folder saved by arlm, a tokenizer.json, a Hugging Face folder, or an arlm
    checkpoint folder (model references such as GGUF files or run folders: arlm.interop.loading)."""
    path = Path(path)
    if (path / "tokenizer" / META_FILE).exists():  # an arlm checkpoint
        path = path / "tokenizer"
    if not path.exists():
        raise ArlmError(f"tokenizer {path} does not exist; use char, word, bpe or a path to tokenizer.json")
    directory = path if path.is_dir() else path.parent
    meta_path = directory / META_FILE
    if meta_path.exists() and path.is_dir():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["kind"] in ("char", "word"):
            return VocabTokenizer(meta["kind"], json.loads((directory / "vocab.json").read_text(encoding="utf-8")))
    file = path if path.is_file() else directory / "tokenizer.json"
    if not file.exists():
        raise ArlmError(f"no tokenizer.json in {directory}")
    return _load_hf_file(file)


def _load_hf_file(file: Path) -> HFTokenizer:
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:  # the Rust error types are not importable
        raise ArlmError(f"{file} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
    specials = _special_tokens(file.parent, backend)
    meta = file.parent / META_FILE
    kind = json.loads(meta.read_text(encoding="utf-8")).get("kind", "hf") if meta.exists() else "hf"
    tokenizer = HFTokenizer(backend, kind=kind, **specials)
    config_path = file.parent / "tokenizer_config.json"
    if config_path.exists():
        template = json.loads(config_path.read_text(encoding="utf-8")).get("chat_template")
        tokenizer.chat_template = template if isinstance(template, str) else None
    return tokenizer


def _special_tokens(directory: Path, backend: Backend) -> dict[str, str | None]:
    """Special tokens from tokenizer_config.json when present, else guessed from the added tokens."""
    config_path = directory / "tokenizer_config.json"
    found: dict[str, str | None] = {"bos": None, "eos": None, "pad": None, "unk": None}
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in found:
            value = config.get(f"{key}_token")
            if isinstance(value, dict):
                value = value.get("content")
            found[key] = value if isinstance(value, str) and backend.token_to_id(value) is not None else None
        return found
    added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    for key, candidates in (
        ("eos", (EOS, "</s>", "<eos>", "<|end_of_text|>")),
        ("bos", ("<s>", "<bos>", EOS)),
        ("pad", (PAD, "<pad>")),
        ("unk", ("<unk>", UNK)),
    ):
        found[key] = next((c for c in candidates if c in added), None)
    return found
