"""GGUF export: a tiny Llama with a BPE tokenizer written as GGUF and read back through arlm's reader (identical
logits and token ids) and through transformers' own GGUF loader; the metadata llama.cpp reads; f16 / bf16 / q8_0;
SmolLM2 out and back in; and what GGUF cannot hold refused with one line, leaving nothing on disk."""

from __future__ import annotations

import pytest
import torch

from arlm.cli import main
from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import load_tokenizer, train_tokenizer
from arlm.errors import ArlmError
from arlm.interop.checkpoint import export_weights, save_checkpoint
from arlm.interop.gguf import load_gguf_model, read_gguf, read_tensors, unpermute_rope_rows
from arlm.interop.gguf_export import export_gguf, gguf_vocab, permute_rope_rows, save_gguf
from arlm.interop.loading import load_model
from arlm.model.transformer import Transformer
from tests.helpers import optional_module, tiny_text

gguf = optional_module("gguf")
Q = gguf.GGMLQuantizationType

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Whitespace   runs,\ttabs\t\tand\n\n\nnew lines  ",
    "Café naïve façade, Ærøskøbing — déjà vu! x_y 12½ 2024-01-31",
    "it's they're I'll; 你好，世界 😀👍🏽 <|endoftext|> after the special token",
]
# name: model shape beyond the common one; GQA with untied embeddings and spare embedding rows, or plain MHA tied
CASES = {
    "gqa-untied-padded": dict(n_kv_head=2, tie_embeddings=False, extra_rows=5),
    "mha-tied": dict(tie_embeddings=True, extra_rows=0),
}


def _random_model(vocab_size: int, *, extra_rows: int = 0, **shape) -> Transformer:
    """A tiny Llama with every parameter random (norm weights too), so a misplaced tensor shows in the logits."""
    config = ModelConfig(
        flavour="llama", vocab_size=vocab_size + extra_rows, block_size=64, n_layer=2, n_head=4, d_model=64, d_ff=96,
        rope_theta=500.0, norm_eps=1e-6, **shape,
    )  # fmt: skip
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.2 * torch.randn_like(param) if "norm" in name else 0.3 * torch.randn_like(param))
    return model


def _checkpoint(root, model, tokenizer):
    return save_checkpoint(
        root / "checkpoint",
        weights=export_weights(model.state_dict(), model.config),
        tokenizer=tokenizer,
        config=RunConfig(model=model.config),
        meta={"step": 0},
    )


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", tiny_text(20) + TEXTS[:1], 300)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, bpe, tmp_path_factory):
    """(our model, our tokenizer, path of the exported GGUF) for one case, exported through the CLI."""
    torch.manual_seed(list(CASES).index(request.param))
    model = _random_model(bpe.vocab_size, **CASES[request.param])
    root = tmp_path_factory.mktemp(request.param)
    out = root / "model.gguf"
    assert main(["export", "gguf", str(_checkpoint(root, model, bpe)), str(out)]) == 0
    return model, bpe, out


@torch.no_grad()
def test_logits_are_identical_through_arlms_reader(exported):
    model, _, path = exported
    loaded = load_model(path)
    ids = torch.randint(0, model.config.vocab_size, (3, 40))
    assert torch.equal(loaded.model(ids), model(ids))
    ours, back = model.config, loaded.model.config
    assert (back.vocab_size, back.n_kv_head, back.ffn_dim, back.tie_embeddings) == (
        ours.vocab_size, ours.kv_heads, ours.ffn_dim, ours.tie_embeddings
    )  # fmt: skip
    assert (back.rope_theta, back.norm_eps, back.block_size) == (ours.rope_theta, ours.norm_eps, ours.block_size)


def test_token_ids_and_text_are_identical(exported):
    _, tokenizer, path = exported
    back = load_model(path).tokenizer
    for text in TEXTS:
        assert back.encode(text) == tokenizer.encode(text)
        assert back.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id
    )  # fmt: skip


def test_metadata_is_what_llama_cpp_reads(exported):
    model, tokenizer, path = exported
    c, meta = model.config, read_gguf(path).metadata
    expected = {
        "general.architecture": "llama",
        "general.file_type": 0,  # ALL_F32
        "llama.context_length": c.block_size,
        "llama.embedding_length": c.d_model,
        "llama.block_count": c.n_layer,
        "llama.feed_forward_length": c.ffn_dim,
        "llama.attention.head_count": c.n_head,
        "llama.attention.head_count_kv": c.kv_heads,
        "llama.rope.dimension_count": c.head_dim,
        "llama.vocab_size": c.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",  # llama.cpp's name for GPT-2's split (llama-vocab.cpp)
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.bos_token_id": tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_id,
    }
    assert {key: meta.get(key) for key in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps, rel=1e-6)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == c.vocab_size
    assert [types[i] for i in (tokenizer.eos_id, tokenizer.pad_id)] == [3, 3]  # CONTROL
    assert types[tokenizer.vocab_size :] == [5] * (c.vocab_size - tokenizer.vocab_size)  # UNUSED padding rows
    assert "Ġ t" in meta["tokenizer.ggml.merges"] or "Ġ a" in meta["tokenizer.ggml.merges"]


def test_tensors_are_named_typed_and_permuted_as_convert_hf_to_gguf_writes_them(exported):
    model, _, path = exported
    contents = read_gguf(path)
    assert {t.tensor_type for t in contents.tensors.values()} == {Q.F32}
    assert ("output.weight" in contents.tensors) != model.config.tie_embeddings
    tensors = read_tensors(contents)
    c = model.config
    q = model.state_dict()["blocks.1.attn.qkv.weight"][: c.n_head * c.head_dim]
    # convert_hf_to_gguf's LlamaModel.permute, written out: (n_head, 2, hd/2, C) with axes 1 and 2 swapped
    hf_permuted = q.reshape(c.n_head, 2, c.head_dim // 2, -1).swapaxes(1, 2).reshape(q.shape)
    assert torch.equal(tensors["blk.1.attn_q.weight"], hf_permuted)


@pytest.mark.hf
@torch.no_grad()
def test_transformers_reads_the_file_to_the_same_logits_and_ids(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, path = exported
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 30))
    ours, theirs = model(ids), hf(ids).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5
    hf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS[:3]:
        assert hf_tokenizer(text, add_special_tokens=False).input_ids == tokenizer.encode(text)


def test_rope_permutation_is_the_readers_inverse():
    weight = torch.randn(3 * 8, 5)
    assert torch.equal(unpermute_rope_rows(permute_rope_rows(weight, 3), 3), weight)
    assert torch.equal(permute_rope_rows(unpermute_rope_rows(weight, 3), 3), weight)


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@torch.no_grad()
def test_smaller_types_hold_exactly_the_rounded_weights(outtype, bpe, tmp_path):
    torch.manual_seed(7)
    model = _random_model(bpe.vocab_size, n_kv_head=2, tie_embeddings=False)
    path = save_gguf(model, bpe, tmp_path / "m.gguf", outtype=outtype)
    kind = Q[outtype.upper()]
    rounded = _random_model(bpe.vocab_size, n_kv_head=2, tie_embeddings=False)
    for name, param in rounded.named_parameters():  # matrices through gguf's own quantize/dequantize
        value = model.state_dict()[name]
        if value.dim() == 2:
            value = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(value.numpy(), kind), kind))
        param.copy_(value.reshape(param.shape))
    types = {t.name.endswith("norm.weight"): t.tensor_type for t in read_gguf(path).tensors.values()}
    assert types == {True: Q.F32, False: kind}
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    assert torch.equal(load_gguf_model(str(path)).model(ids), rounded(ids))


# --- SmolLM2 out and back in -----------------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.slow
@torch.no_grad()
def test_smollm2_round_trips_through_export(smollm2, tmp_path):
    path = save_gguf(smollm2.model, smollm2.tokenizer, tmp_path / "smollm2-f32.gguf")
    back = load_gguf_model(str(path))
    ids = torch.tensor([smollm2.tokenizer.encode("The capital of France is Paris. The capital of Germany is")])
    assert torch.equal(back.model(ids), smollm2.model(ids))
    for text in [*TEXTS, "pi is 3.14159; x1y22z333 <|im_start|>user"]:
        assert back.tokenizer.encode(text) == smollm2.tokenizer.encode(text)
    assert back.tokenizer.chat_template == smollm2.tokenizer.chat_template
    assert back.model.config.rope_theta == smollm2.model.config.rope_theta


@pytest.mark.real_model
def test_a_gguf_tokenizer_saved_in_a_checkpoint_exports_unchanged(smollm2, tmp_path):
    smollm2.tokenizer.save(tmp_path / "tokenizer")  # as a run initialised from smollm2 keeps it
    reloaded = load_tokenizer(tmp_path / "tokenizer")
    vocab = gguf_vocab(reloaded, smollm2.model.config.vocab_size)
    assert vocab.pre == "smollm"  # as in the original file
    backend = smollm2.tokenizer.backend
    assert vocab.tokens == [backend.id_to_token(i) for i in range(backend.get_vocab_size())]
    assert vocab.token_types[:3] == [3, 3, 3] and set(vocab.token_types) == {1, 3}


# --- refused ------------------------------------------------------------------------------------------------


def _fails(capsys, *argv, match):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("kind", ["char", "word"])
def test_char_and_word_tokenizers_are_refused(kind, tmp_path, capsys):
    tokenizer = train_tokenizer(kind, tiny_text(5), 300)
    checkpoint = _checkpoint(tmp_path, _random_model(tokenizer.vocab_size), tokenizer)
    _fails(capsys, "export", "gguf", str(checkpoint), str(tmp_path / "m.gguf"), match="cannot be written to GGUF")
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".m.gguf*"))


def test_gpt2_flavour_and_biases_are_refused(bpe, tmp_path):
    gpt2 = Transformer(ModelConfig(flavour="gpt2", vocab_size=bpe.vocab_size, n_layer=1, d_model=32))
    with pytest.raises(ArlmError, match="this is a gpt2 model.*arlm export hf"):
        save_gguf(gpt2, bpe, tmp_path / "g.gguf")
    biased = Transformer(ModelConfig(flavour="llama", vocab_size=bpe.vocab_size, n_layer=1, d_model=32, bias=True))
    with pytest.raises(ArlmError, match="without biases"):
        save_gguf(biased, bpe, tmp_path / "b.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_split_gguf_cannot_name_is_refused(tmp_path):
    from tokenizers import pre_tokenizers

    tokenizer = train_tokenizer("bpe", tiny_text(5), 300)
    tokenizer.backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ArlmError, match="no GGUF pre-tokenizer"):
        gguf_vocab(tokenizer, tokenizer.vocab_size)


def test_rows_that_do_not_fit_q8_0_blocks_are_refused(bpe, tmp_path):
    model = _random_model(bpe.vocab_size)  # d_ff 96: ffn_down rows of 96 fit; d_model 64 fits
    model = Transformer(ModelConfig(**{**vars(model.config), "d_ff": 48}))
    with pytest.raises(ArlmError, match="blocks of 32.*ffn_down.*48"):
        save_gguf(model, bpe, tmp_path / "q.gguf", outtype="q8_0")
    assert list(tmp_path.iterdir()) == []


def test_existing_files_and_other_names_are_refused(exported, tmp_path, capsys):
    _, _, path = exported
    before = path.read_bytes()
    checkpoint = path.parent / "checkpoint"
    _fails(capsys, "export", "gguf", str(checkpoint), str(path), match="exists")
    assert path.read_bytes() == before
    _fails(capsys, "export", "gguf", str(checkpoint), str(tmp_path / "m.bin"), match=".gguf suffix")
    _fails(capsys, "export", "gguf", str(path), str(path), match="itself; choose an output outside it")
    with pytest.raises(ArlmError, match="itself; choose an output outside it"):
        export_gguf(path, path, overwrite=True)
    assert path.read_bytes() == before
    assert main(["export", "gguf", str(checkpoint), str(path), "--overwrite"]) == 0
    assert path.read_bytes() == before  # the same model writes the same bytes


def test_an_out_file_under_a_file_is_refused_before_the_model_is_read(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ArlmError, match="f.txt is a file, not a folder"):
        export_gguf("no-such-run", tmp_path / "f.txt" / "x.gguf")


def test_an_export_killed_midway_leaves_nothing_after_the_next_one(bpe, tmp_path):
    """A kill -9 mid-export leaves .OUT.tmp-PID (part of the file); the next export of OUT removes it."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".m.gguf.tmp-{int(dead.stdout)}").write_bytes(b"GGUF half")
    save_gguf(_random_model(bpe.vocab_size, n_kv_head=2, tie_embeddings=False), bpe, tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
