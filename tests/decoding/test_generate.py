import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.engine import Engine, compile_options
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.model.quant import Int8Linear, quantize_model
from arlm.model.transformer import Transformer


def _model(flavour="llama", block=64) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        flavour=flavour,
        vocab_size=50,
        block_size=block,
        n_layer=2,
        n_head=4,
        d_model=32,
        n_kv_head=2 if flavour == "llama" else None,
    )
    return Transformer(config).eval()


def _greedy_without_cache(model, ids, n):
    seq = torch.tensor([ids])
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(ids) :].tolist()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_greedy_with_cache_equals_argmax_of_full_forwards(flavour):
    model = _model(flavour)
    out = generate(model, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=20))
    assert out.generated()[0] == _greedy_without_cache(model, [1, 2, 3], 20)
    assert out.sequences.shape == (1, 23) and out.stats["new_tokens"] == 20


def test_left_padded_batch_equals_each_prompt_alone():
    model = _model()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    config = GenerationConfig(strategy="greedy", max_new_tokens=12)
    batch = generate(model, prompts, config).generated()
    alone = [generate(model, [p], config).generated()[0] for p in prompts]
    assert batch == alone


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = _model()
    config = GenerationConfig(strategy="sample", max_new_tokens=30, temperature=1.0, seed=7)
    a = generate(model, [[1, 2]], config).generated()
    b = generate(model, [[1, 2]], config).generated()
    config.seed = 8
    c = generate(model, [[1, 2]], config).generated()
    assert a == b and a != c


@pytest.mark.parametrize("sync_every", [1, 16])
def test_eos_and_stop_checks_end_rows_separately(monkeypatch, sync_every):
    import arlm.decoding.generate as gen

    monkeypatch.setattr(gen, "sync_interval", lambda device, should_stop: 1 if should_stop else sync_every)
    model = _model()
    free = generate(model, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=15)).generated()[0]
    eos = free[4]
    out = generate(
        model, [[1, 2, 3], [4, 5, 6]], GenerationConfig(strategy="greedy", max_new_tokens=15), eos_id=eos, pad_id=0
    )
    assert out.generated()[0] == free[: free.index(eos) + 1]
    row = out.sequences[0, 3:].tolist()
    assert row[len(out.generated()[0]) :] == [0] * (15 - len(out.generated()[0]))
    both = generate(model, [[1, 2, 3], [1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=15), eos_id=eos)
    expected = free[: free.index(eos) + 1]
    assert both.generated() == [expected] * 2 and both.stats["new_tokens"] == 2 * len(expected)
    stopped = generate(
        model,
        [[1, 2, 3]],
        GenerationConfig(strategy="greedy", max_new_tokens=15),
        should_stop=lambda row, ids: len(ids) >= 6,
    )
    assert stopped.generated()[0] == free[:6]


def _greedy_in_a_sliding_window(model, ids, n):
    """Greedy decoding without a cache, each token the argmax of a full forward over the window: the window is
    the prompt and what follows until it would pass the context, then only its newest half."""
    block = model.config.block_size
    window, out = list(ids), []
    for _ in range(n):
        token = int(model(torch.tensor([window]))[0, -1].argmax())
        out.append(token)
        window.append(token)
        if len(window) > block:
            window = window[-(block // 2) :]
    return out


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_sliding_window_writes_past_the_context(flavour):
    model = _model(flavour, block=16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # matrices drawn N(0, 1): greedy output then depends on the whole window (the
        for p in model.parameters():  # small default init repeats one token, which any window reproduces)
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator))
    out = generate(model, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=40))
    generated = out.generated()[0]
    assert len(generated) == 40
    assert generated[:14] == _greedy_without_cache(model, [1, 2, 3], 14)  # the whole context, then slides
    assert generated == _greedy_in_a_sliding_window(model, [1, 2, 3], 40)  # three slides: after 14, 23, 32


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam", "prompt-lookup"])
def test_logits_that_are_not_numbers_are_refused_in_one_line(strategy):
    """A weight holding NaN (a broken file) makes every logit NaN: refused after the prompt, where greedy printed
    nothing and sampling raised inside torch.multinomial."""
    model = _model()
    with torch.no_grad():
        model.blocks[0].mlp.down.weight[0, 0] = float("nan")
    config = GenerationConfig(strategy=strategy, max_new_tokens=4)
    with pytest.raises(ArlmError, match="logits after the prompt are NaN or infinite"):
        generate(model, [[1, 2, 3, 1, 2]], config)


def test_prompt_longer_than_the_context_is_refused():
    model = _model(block=16)
    with pytest.raises(ArlmError, match="the context holds 16") as refused:
        generate(model, [list(range(16))], GenerationConfig(strategy="greedy", max_new_tokens=1))
    assert (refused.value.param, refused.value.code) == ("prompt", "context_length_exceeded")
    with pytest.raises(ArlmError, match="max_new_tokens is 20: more than the 16 positions") as refused:
        generate(model, [[1, 2]], GenerationConfig(strategy="beam", max_new_tokens=20))
    assert (refused.value.param, refused.value.code) == ("max_new_tokens", "context_length_exceeded")


def test_prompts_outside_the_vocabulary_or_padded_on_the_right_are_refused_and_tensors_are_prompts():
    model, config = _model(), GenerationConfig(strategy="greedy", max_new_tokens=4)
    for bad, line in ((50, "prompt id 50 is outside"), (-1, "prompt id -1 is outside")):
        with pytest.raises(ArlmError, match=f"^{line} the model's vocabulary of 50 ids$"):
            generate(model, [[1, 2, bad]], config)
    right = torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]])  # a row continuing from its padding
    with pytest.raises(ArlmError, match="^attention_mask pads a prompt on the right or inside; pad on the left"):
        generate(model, right[0], config, attention_mask=right[1])
    left = generate(model, torch.tensor([[0, 5, 6]]), config, attention_mask=torch.tensor([[0, 1, 1]]))
    as_tensors = generate(model, [torch.tensor([5, 6]), torch.tensor([7, 8, 9])], config)
    assert as_tensors.generated()[0] == left.generated()[0] == generate(model, [[5, 6]], config).generated()[0]
    assert as_tensors.generated()[1] == generate(model, [[7, 8, 9]], config).generated()[0]


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_static_decode_step_equals_the_cached_forward(flavour):
    model = _model(flavour)
    x = torch.randint(0, 50, (2, 12))
    cache = model.new_cache(2, 40)
    logits = [model(x[:, :5], kv_cache=cache)[:, -1]]
    for t in range(5, 12):
        logits.append(model.decode_step(x[:, t : t + 1], torch.tensor([t]), cache))
        cache.length = t + 1
    full = model(x)
    torch.testing.assert_close(torch.stack(logits[1:], 1), full[:, 5:12], rtol=1e-5, atol=1e-5)


def test_compiled_decoding_equals_eager(monkeypatch):
    import arlm.decoding.engine as engine_module

    monkeypatch.setattr(engine_module, "compile_options", lambda device: {"backend": "eager", "fullgraph": True})
    torch._dynamo.reset()  # compiled at fullgraph afresh: earlier tests' compilations count against its recompile limit
    model = _model()
    eager = generate(model, [[1, 2, 3], [4, 5, 6]], GenerationConfig(strategy="greedy", max_new_tokens=16))
    config = GenerationConfig(strategy="greedy", max_new_tokens=16, compile=True)
    engine = Engine(model)
    compiled = generate(engine, [[1, 2, 3], [4, 5, 6]], config)
    assert compiled.generated() == eager.generated()
    assert engine._compiled is not None and engine.static  # the compiled path was taken (one graph, no breaks)
    cache = engine.cache
    again = generate(engine, [[7, 8, 9], [1, 1, 1]], config)  # a second call reuses the engine's static cache
    assert engine.cache is cache and again.stats["new_tokens"] == 32
    assert not [k for k in vars(model) if "compiled" in k or "static" in k]  # nothing hung on the model


@pytest.mark.gpu
def test_cuda_graph_decoding_equals_eager_on_gpu():
    model = _model().cuda()
    prompt = [[1, 2, 3]]
    eager = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24))
    compiled = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24, compile=True))
    assert compiled.generated() == eager.generated()


@pytest.mark.gpu
def test_one_manual_cuda_graph_decodes_as_eager_and_is_reused_while_its_cache_fits():
    """compile_options(graph="manual"): the engine captures one CUDA graph over its static cache on the first step
    and replays it; greedy output equals eager's, again on the same engine (the graph reused), after a prompt of
    another length (the same cache, the position set anew), and for another batch (a new cache, a new graph)."""
    model = _model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # matrices drawn N(0, 1): greedy output then depends on every position (the small
        for p in model.parameters():  # default init repeats one token, which a wrong position would too)
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator))
    model = model.cuda()
    engine = Engine(model, compile_options(torch.device("cuda"), graph="manual"))
    config = GenerationConfig(strategy="greedy", max_new_tokens=24)
    compiled = GenerationConfig(strategy="greedy", max_new_tokens=24, compile=True)
    graphs = []
    for prompt in ([[1, 2, 3]], [[1, 2, 3]], [[4, 5, 6, 7, 8, 9, 10, 11, 12]], [[7]]):
        assert generate(engine, prompt, compiled).generated() == generate(model, prompt, config).generated()
        graphs.append(engine._graph)
    graph = graphs[0]
    assert engine._manual and graph is not None and all(g is graph for g in graphs)  # one capture (64 positions)
    assert int(graph.pos) == engine.cache.length  # the position advanced by the replays themselves
    batch = [[1, 2, 3], [4, 5, 6]]
    assert generate(engine, batch, compiled).generated() == generate(model, batch, config).generated()
    assert engine._graph is not graph  # two rows: a new cache, captured again
    engine.close()
    assert engine._graph is None and engine.cache is None


@pytest.mark.gpu
def test_int8_on_gpu_stays_close_to_bfloat16_and_compiles():
    """--dtype int8 on a GPU (bfloat16 activations, int8 codes widened in the matmul): logits close to the bfloat16
    model's, and its compiled (CUDA graph) greedy equals its eager greedy."""
    model = _model().to("cuda", torch.bfloat16)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]], device="cuda")
    with torch.no_grad():
        reference = model(ids).float()
        quantize_model(model, "int8")
        logits = model(ids).float()
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.dense
    assert (logits - reference).abs().max() <= 0.05 * reference.abs().max()
    prompt = [[1, 2, 3]]
    eager = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24))
    compiled = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24, compile=True))
    assert compiled.generated() == eager.generated()


# ---------------------------------------------------------------- padding, min/max new tokens, several samples

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12], [11, 12], [13, 14, 15]]


def _sharp_model() -> Transformer:
    """A random model with peaked next-token distributions (init_std 0.25), so processors change its choices."""
    torch.manual_seed(0)
    config = ModelConfig(
        flavour="llama", vocab_size=50, block_size=64, n_layer=2, n_head=4, d_model=32, n_kv_head=2, init_std=0.25
    )
    return Transformer(config).eval()


@pytest.mark.parametrize(
    "strategy,options,pad",
    [
        ("greedy", {"repetition_penalty": 3.0}, 7),
        ("greedy", {"no_repeat_ngram_size": 2}, 1),
        ("beam", {"repetition_penalty": 3.0}, 7),
        ("beam", {"no_repeat_ngram_size": 2}, 7),
    ],
)
def test_a_row_decodes_the_same_alone_and_in_a_padded_batch(monkeypatch, strategy, options, pad):
    import arlm.decoding.generate as gen

    model = _sharp_model()
    config = GenerationConfig(strategy=strategy, max_new_tokens=12, **options)
    alone = [generate(model, [p], config, pad_id=pad).generated()[0] for p in PROMPTS]
    assert generate(model, PROMPTS, config, pad_id=pad).generated() == alone
    monkeypatch.setattr(gen, "prompt_starts", lambda mask: None)  # count the padding: the test can fail
    assert generate(model, PROMPTS, config, pad_id=pad).generated() != alone


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam", "speculative", "prompt-lookup"])
def test_max_new_tokens_zero_returns_the_prompts(strategy):
    model = _sharp_model()
    n = 2 if strategy == "beam" else 1
    prompts = PROMPTS[:1] if strategy in ("speculative", "prompt-lookup") else PROMPTS  # one prompt at a time
    config = GenerationConfig(strategy=strategy, max_new_tokens=0, num_return_sequences=n)
    out = generate(model, prompts, config, draft=model, eos_id=3, pad_id=0)
    width = max(len(p) for p in prompts)
    expected = [[0] * (width - len(p)) + p for p in prompts for _ in range(n)]
    assert out.sequences.tolist() == expected and out.generated() == [[]] * len(expected)
    assert out.stats["new_tokens"] == 0


def test_num_return_sequences_gives_independent_samples_of_each_prompt():
    model = _sharp_model()
    config = GenerationConfig(strategy="sample", max_new_tokens=10, num_return_sequences=3, seed=4)
    out = generate(model, PROMPTS[:2], config).generated()
    repeated = [p for p in PROMPTS[:2] for _ in range(3)]  # as transformers: each prompt N times, one generator
    single = GenerationConfig(strategy="sample", max_new_tokens=10, seed=4)
    assert len(out) == 6 and out == generate(model, repeated, single).generated()
    assert len({tuple(row) for row in out[:3]}) == 3  # three different samples of the first prompt
    with pytest.raises(ArlmError, match="num_return_sequences 3 needs"):
        generate(model, PROMPTS, GenerationConfig(strategy="greedy", num_return_sequences=3))


def _greedy_min_new(model, ids, n, eos, minimum):
    """Reference: argmax of full forwards with EOS masked while fewer than `minimum` tokens exist (transformers'
    MinNewTokensLengthLogitsProcessor), stopping after EOS."""
    seq, new = torch.tensor([ids]), []
    for i in range(n):
        logits = model(seq)[:, -1]
        if i < minimum:
            logits[:, eos] = float("-inf")
        new.append(int(logits.argmax(-1)))
        seq = torch.cat([seq, torch.tensor([[new[-1]]])], dim=1)
        if new[-1] == eos:
            break
    return new


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_min_new_tokens_holds_back_eos(strategy):
    model = _sharp_model()
    free = generate(model, [PROMPTS[0]], GenerationConfig(strategy="greedy", max_new_tokens=12)).generated()[0]
    eos = free[1]  # greedy would end after two tokens
    config = GenerationConfig(strategy=strategy, max_new_tokens=12, num_beams=2, early_stopping=True, min_new_tokens=6)
    out = generate(model, [PROMPTS[0]], config, eos_id=eos).generated()[0]
    assert eos not in out[:6] and len(out) >= 6
    if strategy == "greedy":
        assert out == _greedy_min_new(model, PROMPTS[0], 12, eos, 6)
    config.min_new_tokens = 0
    assert generate(model, [PROMPTS[0]], config, eos_id=eos).generated()[0] != out  # the option changed the output


def test_min_new_tokens_in_sampling():
    model = _sharp_model()
    first = generate(model, [PROMPTS[0]], GenerationConfig(strategy="greedy", max_new_tokens=1)).generated()[0][0]
    config = GenerationConfig(strategy="sample", temperature=0.05, max_new_tokens=8, seed=1, min_new_tokens=4)
    out = generate(model, [PROMPTS[0]], config, eos_id=first).generated()[0]
    assert first not in out[:4] and len(out) >= 4
    config.min_new_tokens = 0
    assert generate(model, [PROMPTS[0]], config, eos_id=first).generated()[0] == [first]


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_repetition_penalty_does_not_depend_on_the_other_prompts(smollm2):
    """The issue's example: with pad = EOS, counting the padding penalised EOS only in the padded row."""
    tok = smollm2.tokenizer
    fib = tok.encode('def fibonacci(n):\n    """Return the n-th')
    longer = tok.encode(
        'def factorial(n):\n    """Return n! computed iteratively; factorial(5) == 120, raising errors.'
    )
    config = GenerationConfig(strategy="greedy", max_new_tokens=24, repetition_penalty=1.3)
    alone = generate(smollm2.model, [fib], config, eos_id=tok.eos_id, pad_id=tok.pad_id).generated()[0]
    batch = generate(smollm2.model, [fib, longer], config, eos_id=tok.eos_id, pad_id=tok.pad_id).generated()
    assert batch[0] == alone and alone[-1] == tok.eos_id  # it stops after the docstring, in the batch too
