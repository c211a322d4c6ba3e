import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.batch import BatchEngine, BatchSequence
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.model import native
from arlm.model.inference import optimize_for_decoding, rows_invariant
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer


def _model(flavour="llama", block=96, nan=False) -> Transformer:
    """A tiny model laid out for batched decoding; nan: one of its weights NaN (a broken file)."""
    torch.manual_seed(0)
    config = ModelConfig(
        flavour=flavour,
        vocab_size=61,
        block_size=block,
        n_layer=2,
        n_head=4,
        d_model=32,
        n_kv_head=2 if flavour == "llama" else None,
        init_std=0.3,  # peaked distributions: greedy text that is not one repeated token
    )
    model = Transformer(config).eval()
    if nan:
        with torch.no_grad():
            model.blocks[0].mlp.down.weight[0, 0] = float("nan")
    return optimize_for_decoding(model, chunks=2, batch_invariant=True)


def _run(engine: BatchEngine, arrivals: dict[int, list[BatchSequence]], limit: int = 500) -> list[int]:
    """Step the engine, admitting each sequence at its arrival step (or, when the slots are full, as soon as one
    frees); returns the batch size of every step."""
    occupancy, waiting = [], []
    for step in range(limit):
        waiting += arrivals.get(step, [])
        while waiting and engine.free:
            engine.admit(waiting.pop(0))
        if not engine.active and step > max(arrivals):
            return occupancy
        occupancy.append(len(engine.active))
        engine.step()
    raise AssertionError("the engine did not finish")


def _requests(n=8):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 61, (length,), generator=g).tolist() for length in (1, 2, 5, 9, 3, 17, 30, 7)[:n]]
    return prompts, [4, 20, 11, 33, 6, 25, 14, 40][:n]


def test_a_prompt_whose_logits_are_not_numbers_is_refused():
    engine = BatchEngine(_model(nan=True), max_batch=2, max_len=80)
    engine.admit(BatchSequence([1, 2, 3], GenerationConfig(strategy="greedy", max_new_tokens=4)))
    with pytest.raises(ArlmError, match="logits after the prompt are NaN or infinite"):
        engine.step()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_greedy_in_a_busy_batch_equals_generate_alone(flavour):
    model = _model(flavour)
    prompts, lengths = _requests()
    configs = [GenerationConfig(strategy="greedy", max_new_tokens=n) for n in lengths]
    seqs = [BatchSequence(p, c) for p, c in zip(prompts, configs)]
    engine = BatchEngine(model, max_batch=4, max_len=80)
    arrivals = {0: seqs[:3], 2: seqs[3:5], 5: [seqs[5]], 9: [seqs[6]], 13: [seqs[7]]}
    occupancy = _run(engine, arrivals)
    assert max(occupancy) == 4  # the batch was full, and slots were reused: 8 sequences through 4 slots
    for seq, prompt, config in zip(seqs, prompts, configs):
        assert seq.generated == generate(model, [prompt], config).generated()[0]
        assert seq.finish_reason == "length"
    assert sorted(engine.free) == [0, 1, 2, 3] and not engine.active


def test_seeded_sampling_and_processors_per_row_equal_generate_alone():
    model = _model()
    prompts, lengths = _requests()
    settings = [
        {"temperature": 0.8, "seed": 1},
        {"temperature": 1.3, "top_k": 5, "seed": 2},
        {"temperature": 1.0, "top_p": 0.7, "seed": 3},
        {"temperature": 1.0, "min_p": 0.2, "seed": 4},
        {"temperature": 0.9, "repetition_penalty": 1.5, "seed": 5},
        {"strategy": "greedy", "repetition_penalty": 2.0},
        {"temperature": 1.0, "no_repeat_ngram_size": 2, "seed": 7},
        {"temperature": 0.0, "seed": 8},
    ]
    configs = [GenerationConfig(**{"strategy": "sample", "max_new_tokens": n, **s}) for n, s in zip(lengths, settings)]
    seqs = [BatchSequence(p, c) for p, c in zip(prompts, configs)]
    _run(BatchEngine(model, max_batch=8, max_len=80), {0: seqs[:4], 3: seqs[4:]})
    for seq, prompt, config in zip(seqs, prompts, configs):
        assert seq.generated == generate(model, [prompt], config).generated()[0], config


def test_eos_ends_a_sequence_and_frees_its_slot():
    model = _model()
    prompt = [5, 6, 7]
    free = generate(model, [prompt], GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    eos = free[6]
    seq = BatchSequence(prompt, GenerationConfig(strategy="greedy", max_new_tokens=30), eos_id=eos)
    other = BatchSequence([9, 9], GenerationConfig(strategy="greedy", max_new_tokens=30))
    engine = BatchEngine(model, max_batch=2, max_len=64)
    _run(engine, {0: [seq, other]})
    assert seq.generated == free[: free.index(eos) + 1] and seq.finish_reason == "stop"
    assert len(other.generated) == 30 and other.finish_reason == "length"


def test_long_prompts_are_prefilled_in_chunks_and_short_ones_never_split():
    model = _model(block=128)
    g = torch.Generator().manual_seed(5)
    long_prompt = torch.randint(1, 61, (70,), generator=g).tolist()
    short = [torch.randint(1, 61, (n,), generator=g).tolist() for n in (12, 15)]
    config = GenerationConfig(strategy="greedy", max_new_tokens=10)
    seqs = [BatchSequence(p, config) for p in [long_prompt, *short]]
    engine = BatchEngine(model, max_batch=3, max_len=100, prefill_chunk=16)
    forwards = []
    original = model.forward
    model.forward = lambda ids, **kw: forwards.append(ids.shape[1]) or original(ids, **kw)
    _run(engine, {0: seqs})
    assert forwards[:5] == [16, 16, 16, 16, 6]  # the long prompt, chunk by chunk, one chunk a step
    assert forwards[5:7] == [12, 15]  # short prompts whole, when a step's budget allows
    for seq in seqs[1:]:
        assert seq.generated == generate(model, [seq.prompt], config).generated()[0]
    # the chunked prompt: its logits are the one-shot prefill's up to rounding
    cache = model.new_cache(1, 80)
    one_shot = original(torch.tensor([long_prompt]), kv_cache=cache, num_logits=1)[0, -1]
    row_cache = model.new_slot_cache(1, 80)
    row = row_cache.row(0)
    for start in range(0, 70, 16):
        chunked = original(torch.tensor([long_prompt[start : start + 16]]), kv_cache=row, num_logits=1)[0, -1]
    torch.testing.assert_close(chunked, one_shot, rtol=1e-5, atol=1e-5)


def test_sequences_that_cannot_run_are_refused():
    engine = BatchEngine(_model(), max_batch=1, max_len=32)
    with pytest.raises(ArlmError, match="cannot share a batch"):
        engine.admit(BatchSequence([1], GenerationConfig(strategy="beam")))
    with pytest.raises(ArlmError, match="32 positions"):
        engine.admit(BatchSequence([1] * 20, GenerationConfig(strategy="greedy", max_new_tokens=13)))
    with pytest.raises(ArlmError, match="empty"):
        engine.admit(BatchSequence([], GenerationConfig(strategy="greedy")))
    engine.admit(BatchSequence([1], GenerationConfig(strategy="greedy", max_new_tokens=3)))
    with pytest.raises(ArlmError, match="no free slot"):
        engine.admit(BatchSequence([1], GenerationConfig(strategy="greedy", max_new_tokens=3)))


def test_release_mid_decoding_frees_the_slot_for_the_next_sequence():
    model = _model()
    engine = BatchEngine(model, max_batch=1, max_len=64)
    first = BatchSequence([1, 2], GenerationConfig(strategy="greedy", max_new_tokens=40))
    engine.admit(first)
    for _ in range(3):
        engine.step()
    engine.release(first)
    assert first.finish_reason == "cancelled" and len(first.generated) == 3 and engine.free == [0]
    config = GenerationConfig(strategy="greedy", max_new_tokens=12)
    second = BatchSequence([4, 5, 6], config)
    _run(engine, {0: [second]})
    assert second.generated == generate(model, [[4, 5, 6]], config).generated()[0]


def test_logprobs_are_the_models_own_distribution():
    model = _model()
    seq = BatchSequence([3, 4, 5], GenerationConfig(strategy="greedy", max_new_tokens=3), top_logprobs=4)
    engine = BatchEngine(model, max_batch=1, max_len=32)
    engine.admit(seq)
    first = engine.step()[0]
    expected = torch.log_softmax(model(torch.tensor([[3, 4, 5]]))[0, -1], dim=-1)
    assert first.token == int(expected.argmax())
    assert first.logprob == pytest.approx(float(expected.max()), abs=1e-5)
    assert [t for t, _ in first.top] == expected.topk(4).indices.tolist()


def test_presence_and_frequency_penalties_follow_openai():
    from arlm.decoding.processors import presence_frequency_penalty

    scores = torch.zeros(1, 5)
    out = presence_frequency_penalty(scores, torch.tensor([[1, 1, 3]]), presence=0.5, frequency=0.25)
    assert out.tolist() == [[0.0, -1.0, 0.0, -0.75, 0.0]]


def test_logit_bias_adds_to_each_rows_scores():
    from arlm.decoding.processors import add_logit_bias

    scores = torch.zeros(2, 5)
    assert add_logit_bias(scores, {1: -100.0, 4: 2.5}).tolist() == [[0.0, -100.0, 0.0, 0.0, 2.5]] * 2
    assert scores.abs().sum() == 0  # a new tensor: the logits kept for log-probabilities are untouched


@pytest.mark.parametrize("chunk", [4, 64])
def test_a_scored_prompt_gets_each_tokens_logprob_given_those_before(chunk):
    model = _model()
    prompt = torch.randint(1, 61, (23,), generator=torch.Generator().manual_seed(5)).tolist()
    seq = BatchSequence(prompt, GenerationConfig(strategy="greedy", max_new_tokens=2), top_logprobs=2)
    seq.prompt_logprobs = True
    engine = BatchEngine(model, max_batch=2, max_len=40, prefill_chunk=chunk)
    _run(engine, {0: [seq]})
    with torch.inference_mode():  # the reference: one forward over the whole prompt, no cache
        logprobs = torch.log_softmax(model(torch.tensor([prompt]))[0].float(), dim=-1)  # (T, V)
    assert len(seq.prompt_scores) == len(prompt) - 1
    for j, scored in enumerate(seq.prompt_scores):  # token j + 1 given tokens 0 .. j
        assert scored.logprob == pytest.approx(float(logprobs[j, prompt[j + 1]]), abs=1e-5)
        assert [t for t, _ in scored.top] == logprobs[j].topk(2).indices.tolist()
    assert seq.generated == generate(model, [prompt], seq.config).generated()[0]  # decoding as without scores


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
@pytest.mark.parametrize("kind", ["float32", "int4"])
def test_a_steps_new_prompts_share_one_forward_and_decode_as_alone(kind):
    """On arlm's kernels (rows_invariant) the prompts admitted together are prefilled in one forward, within the
    step's budget and never split; every sequence still decodes what generate() gives it alone, its prompt's scores
    too."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=61, block_size=160, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    config.init_std = 0.3
    model = Transformer(config).eval()
    model = optimize_for_decoding(quantize_model(model, kind) if kind != "float32" else model, batch_invariant=True)
    assert rows_invariant(model)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 61, (n,), generator=g).tolist() for n in (1, 40, 5, 90, 33, 17, 64, 7)]
    seqs = [BatchSequence(p, GenerationConfig(strategy="greedy", max_new_tokens=12)) for p in prompts]
    seqs[2].prompt_logprobs, seqs[2].top_logprobs = True, 2
    engine = BatchEngine(model, max_batch=8, max_len=150, prefill_chunk=128)
    shared, original = [], model.prefill_many
    model.prefill_many = lambda chunks: shared.append([ids.shape[1] for ids, _, _ in chunks]) or original(chunks)
    _run(engine, {0: seqs})
    assert shared == [[1, 40, 5], [90, 33], [17, 64, 7]]  # 128 tokens a step at most, no prompt split
    for seq, prompt in zip(seqs, prompts):
        assert seq.generated == generate(model, [prompt], seq.config).generated()[0]
    alone = BatchSequence(prompts[2], seqs[2].config, top_logprobs=2, prompt_logprobs=True)
    _run(BatchEngine(model, max_batch=1, max_len=150), {0: [alone]})
    assert seqs[2].prompt_scores == alone.prompt_scores and len(alone.prompt_scores) == 4


@pytest.mark.parametrize("reuse", [True, False])
def test_a_follow_up_prompt_starts_from_what_its_slot_holds(reuse):
    """reuse_prefix: a chat's next turn (the last prompt, its answer, a new message) goes to the slot that holds
    them and is prefilled from there: only the new tokens go through a forward, its logits are a fresh prefill's up
    to rounding and its greedy tokens generate()'s. A prompt that shares nothing, or one whose every position is
    scored, starts from 0. Without reuse_prefix every prompt starts from 0."""
    model = _model(block=128)
    g = torch.Generator().manual_seed(7)
    first, other = (torch.randint(1, 61, (n,), generator=g).tolist() for n in (21, 9))
    config = GenerationConfig(strategy="greedy", max_new_tokens=10)
    engine = BatchEngine(model, max_batch=2, max_len=100, reuse_prefix=reuse)
    a, b = BatchSequence(first, config), BatchSequence(other, config)
    _run(engine, {0: [a, b]})
    held = len(first) + len(a.generated) - 1  # the last token chosen was never written
    follow = BatchSequence(first + a.generated + [5, 6, 7], config)
    forwards, original = [], model.forward
    model.forward = lambda ids, **kw: forwards.append((ids.shape[1], original(ids, **kw))) or forwards[-1][1]
    start = engine.admit(follow)
    assert start == (held if reuse else 0) and (follow.slot == a.slot or not reuse)
    while not follow.finished:
        engine.step()
    rows, logits = forwards[0]
    assert rows == len(follow.prompt) - start  # only what the slot did not hold
    with torch.inference_mode():
        fresh_logits = original(torch.tensor([follow.prompt]))[0, -1]  # (V,) one forward, no cache
    torch.testing.assert_close(logits[0, -1], fresh_logits, rtol=1e-5, atol=1e-5)
    assert follow.generated == generate(model, [follow.prompt], config).generated()[0]
    fresh = BatchSequence(list(reversed(first)), config)  # shares no beginning with what either slot holds
    scored = BatchSequence(first + a.generated, config, top_logprobs=0, prompt_logprobs=True)
    engine.admit(scored)
    engine.admit(fresh)
    assert fresh.filled == 0 and scored.filled == 0


def test_a_prompt_sharing_nothing_takes_the_least_recently_freed_slot():
    """Two conversations on two slots, one turn at a time: a new conversation took the slot just freed, the one
    the next turn of the conversation going on would reuse, so with more conversations than slots none stayed warm
    (llama-server picks the least recently used slot)."""
    model = _model(block=128)
    config = GenerationConfig(strategy="greedy", max_new_tokens=4)
    engine = BatchEngine(model, max_batch=2, max_len=100, reuse_prefix=True)
    g = torch.Generator().manual_seed(3)
    first, other = (torch.randint(1, 61, (n,), generator=g).tolist() for n in (12, 10))
    a = BatchSequence(first, config)
    _run(engine, {0: [a]})
    b = BatchSequence(other, config)  # shares nothing with a: the slot a did not use
    _run(engine, {0: [b]})
    assert b.slot != a.slot
    follow = BatchSequence(first + a.generated + [5, 6], config)
    assert engine.admit(follow) == len(first) + len(a.generated) - 1 and follow.slot == a.slot
