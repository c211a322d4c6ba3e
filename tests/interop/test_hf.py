"""Export to the Hugging Face layout, checked against transformers itself (logits, greedy decoding,
AutoTokenizer), and the way back through load_hf_folder."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from arlm.config import GenerationConfig, ModelConfig, RunConfig
from arlm.data.tokenizers import train_tokenizer
from arlm.decoding.generate import generate, left_pad
from arlm.errors import ArlmError
from arlm.interop.checkpoint import export_weights, save_checkpoint
from arlm.interop.hf import export_hf, load_hf_folder
from arlm.interop.loading import load_model
from arlm.model.transformer import Transformer
from tests.helpers import tiny_text

pytestmark = pytest.mark.hf

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Whitespace   runs,\ttabs\t\tand\n\n\nnew lines  ",
    "Café naïve façade, Ærøskøbing — déjà vu! x_y 12½",
    "Zeichen wie ß, ñ und e\u0301 (combining) sind selten",
]
# name: (model shape, tokenizer kind); biases and tying both ways, GQA in both flavours
CASES = {
    "gpt2-bias-tied-char": (dict(flavour="gpt2", bias=True, tie_embeddings=True), "char"),
    "gpt2-nobias-untied-gqa-word": (dict(flavour="gpt2", n_kv_head=2, tie_embeddings=False), "word"),
    "llama-gqa-tied-bpe": (dict(flavour="llama", n_kv_head=2, tie_embeddings=True), "bpe"),
    "llama-bias-untied-mqa-char": (dict(flavour="llama", n_kv_head=1, bias=True, tie_embeddings=False), "char"),
}


def _random_model(shape: dict, vocab_size: int) -> Transformer:
    """A tiny model with every parameter random (biases and norm weights too), so a misplaced one shows."""
    config = ModelConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, d_model=32, d_ff=48, **shape)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = "norm" in name and name.endswith("weight")
            param.copy_(1 + 0.2 * torch.randn_like(param) if is_norm else 0.3 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than two when the cores are busy elsewhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(our model, our tokenizer, exported folder, transformers model) for one case."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(list(CASES).index(request.param))
    shape, kind = CASES[request.param]
    tokenizer = train_tokenizer(kind, tiny_text(20) + TEXTS[:1], 300)
    model = _random_model(shape, tokenizer.vocab_size)
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = save_checkpoint(
        root / "checkpoint",
        weights=export_weights(model.state_dict(), model.config),
        tokenizer=tokenizer,
        config=RunConfig(model=model.config),
        meta={"step": 0},
    )
    folder = export_hf(checkpoint, root / "hf")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer, folder, hf


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [torch.randint(0, vocab_size, (n,)).tolist() for n in (16, 11, 4)]
    return left_pad(prompts, pad_id=0)


def test_files_are_the_hugging_face_layout(exported):
    model, tokenizer, folder, _ = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [{"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[config["model_type"]]]
    assert (config["eos_token_id"], config["pad_token_id"]) == (tokenizer.eos_id, tokenizer.pad_id)
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_id
    names = set(load_file(folder / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not model.config.tie_embeddings)  # a tied matrix is stored once
    assert not list(folder.parent.glob(".hf*"))  # no temporary folder left behind


@torch.no_grad()
def test_logits_match_transformers(exported):
    model, _, _, hf = exported
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    error = _relative_error(model(ids), hf(ids).logits)
    print(f"{model.config.flavour} max relative logit error {error:.2e}")
    assert error <= 1e-5


@torch.no_grad()
def test_left_padded_logits_match_transformers(exported):
    model, _, _, hf = exported
    ids, mask = _padded_batch(model.config.vocab_size)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF generate passes; a plain forward would not count
    ours = model(ids, attention_mask=mask)
    theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert _relative_error(ours[real], theirs[real]) <= 1e-5


def _hf_greedy(hf, ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> list[list[int]]:
    out = hf.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=20,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
    )
    return out[:, ids.shape[1] :].tolist()


def test_greedy_decoding_matches_transformers(exported):
    model, tokenizer, _, hf = exported
    config = GenerationConfig(strategy="greedy", max_new_tokens=20)
    prompt = torch.randint(0, model.config.vocab_size, (7,)).tolist()
    ours = generate(model, [prompt], config).generated()
    theirs = _hf_greedy(hf, torch.tensor([prompt]), torch.ones(1, 7, dtype=torch.long), tokenizer.pad_id)
    assert ours == theirs and len(theirs[0]) == 20
    ids, mask = _padded_batch(model.config.vocab_size)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    ours = generate(model, prompts, config).generated()
    theirs = _hf_greedy(hf, ids, mask, tokenizer.pad_id)
    assert ours == theirs and all(len(row) == 20 for row in theirs)


def test_auto_tokenizer_gives_our_ids_and_text(exported):
    from transformers import AutoTokenizer

    _, tokenizer, folder, _ = exported
    theirs = AutoTokenizer.from_pretrained(folder)
    assert theirs.is_fast
    assert (theirs.eos_token_id, theirs.pad_token_id) == (tokenizer.eos_id, tokenizer.pad_id)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids + [tokenizer.eos_id], skip_special_tokens=True) == tokenizer.decode(ids)
    if tokenizer.unk_id is not None:  # char/word: unknown symbols really occur in these texts
        assert any(tokenizer.unk_id in tokenizer.encode(text) for text in TEXTS)


@torch.no_grad()
def test_round_trip_through_load_hf_folder(exported):
    model, tokenizer, folder, _ = exported
    loaded = load_model(folder)  # detects the HF folder and calls load_hf_folder
    back, c = loaded.model, loaded.config.model
    assert (c.flavour, c.tie_embeddings, c.vocab_size, c.block_size) == (
        model.config.flavour,
        model.config.tie_embeddings,
        model.config.vocab_size,
        model.config.block_size,
    )
    assert c.bias == model.config.bias
    ids, mask = _padded_batch(model.config.vocab_size)
    assert _relative_error(back(ids, attention_mask=mask), model(ids, attention_mask=mask)) <= 1e-6
    for text in TEXTS:
        assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
        assert loaded.tokenizer.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert (loaded.tokenizer.eos_id, loaded.tokenizer.pad_id) == (tokenizer.eos_id, tokenizer.pad_id)


@torch.no_grad()
def test_a_folder_written_by_transformers_loads(exported, tmp_path):
    model, _, folder, hf = exported
    hf.save_pretrained(tmp_path / "saved")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / "saved" / name)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    assert _relative_error(load_hf_folder(tmp_path / "saved").model(ids), hf(ids).logits) <= 1e-5


@torch.no_grad()
def test_sharded_safetensors_load(exported, tmp_path):
    model, _, folder, _ = exported
    sharded = shutil.copytree(folder, tmp_path / "sharded")
    weights = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(weights)
    weight_map = {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({k: weights[k] for k in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    assert _relative_error(load_hf_folder(sharded).model(ids), model(ids)) <= 1e-6


def test_bad_folders_are_refused(exported, tmp_path):
    _, _, folder, _ = exported
    bert = shutil.copytree(folder, tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ArlmError, match=r"model_type 'bert' is not supported.*gpt2, llama"):
        load_hf_folder(bert)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(ArlmError, match=r"only pickle weights \(pytorch_model.bin\)"):
        load_hf_folder(pickled)
    missing = shutil.copytree(folder, tmp_path / "missing")
    weights = load_file(missing / "model.safetensors")
    name = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != name}, missing / "model.safetensors")
    with pytest.raises(ArlmError, match=f"weight {name} is missing"):
        load_hf_folder(missing)
    truncated = shutil.copytree(folder, tmp_path / "truncated")
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ArlmError, match=r"model.safetensors cannot be read as safetensors .*it may be truncated"):
        load_hf_folder(truncated)


def test_export_never_overwrites_without_being_asked(exported, tmp_path):
    checkpoint = exported[2].parent / "checkpoint"
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # (--overwrite is never suggested where it would be refused)
        with pytest.raises(ArlmError, match="holds no Hugging Face model .--overwrite replaces only one"):
            export_hf(checkpoint, target, overwrite=overwrite)  # a folder of other files is never deleted
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    project = tmp_path / "project"  # a folder of the user's that happens to hold a config.json
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my app"}')
    (project / "src" / "main.py").write_text("print('mine')")
    with pytest.raises(ArlmError, match=r"holds files that are not an export's \(src\); --overwrite would delete"):
        export_hf(checkpoint, project, overwrite=True)
    assert (project / "src" / "main.py").read_text() == "print('mine')"
    target = tmp_path / "hf"
    export_hf(checkpoint, target)
    (target / "notes.txt").write_text("the user's, beside an earlier export")
    with pytest.raises(ArlmError, match=r"\(notes.txt\); --overwrite would delete them"):
        export_hf(checkpoint, target, overwrite=True)
    (target / "notes.txt").unlink()
    (target / "model.safetensors").write_bytes(b"stale")
    export_hf(checkpoint, target, overwrite=True)  # an earlier export alone: replaced whole
    assert (target / "model.safetensors").stat().st_size > 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ArlmError, match="holds .*choose an output outside it"):
        export_hf(checkpoint, checkpoint.parent, overwrite=True)


def test_an_out_folder_under_a_file_is_refused_before_the_model_is_read(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ArlmError, match="f.txt is a file, not a folder"):
        export_hf("no-such-run", tmp_path / "f.txt" / "sub")


def test_an_export_killed_midway_leaves_nothing_after_the_next_one(exported, tmp_path):
    """A kill -9 mid-export leaves .OUT.tmp-PID (the half-written weights); the next export of OUT removes it."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".hf.tmp-{int(dead.stdout)}"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    export_hf(exported[2].parent / "checkpoint", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
