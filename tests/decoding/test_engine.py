"""The one decoding engine: every strategy's model forwards are the engine's prefill / step / verify, the engine
owns (and frees) its cache, and every option either works or is refused with one line."""

import collections
import contextlib
import dataclasses

import pytest
import torch

import arlm.decoding.engine as engine_module
from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.engine import Engine, compile_options
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer


def _model(seed=0, layers=2, d=32):
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=50, block_size=64, n_layer=layers, n_head=4, d_model=d)
    return Transformer(config).eval()


STRATEGIES = {
    "greedy": (GenerationConfig(strategy="greedy", max_new_tokens=12), False),
    "sample": (GenerationConfig(strategy="sample", max_new_tokens=12, seed=3), False),
    "beam": (GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8), False),
    "speculative": (GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=12), True),
    "prompt-lookup": (GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=12), False),
    "adaptive": (
        GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=12, adaptive_draft=True),
        False,
    ),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_model_forward_of_every_strategy_is_an_engine_call(name, monkeypatch):
    config, uses_draft = STRATEGIES[name]
    target, draft = _model(0), _model(1, layers=1, d=32)
    calls = collections.Counter()
    forwards = collections.Counter()
    for method in ("prefill", "step", "verify"):
        original = getattr(Engine, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Engine, method, counted)
    for label, model in (("target", target), ("draft", draft)):
        original_forward = model.forward

        def forward(*args, _original=original_forward, _label=label, **kwargs):
            forwards[_label] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)
    out = generate(target, [[1, 2, 3, 1, 2, 3, 1, 2]], config, draft=draft if uses_draft else None)
    assert out.stats["new_tokens"] > 0
    assert calls["prefill"] >= 1  # every strategy starts with the engine's prefill
    assert sum(calls.values()) == sum(forwards.values())  # and runs its model (and draft) through nothing else
    if name in ("speculative", "prompt-lookup", "adaptive"):
        assert calls["verify"] == out.stats["target_forwards"]
    else:
        assert calls["step"] >= 1 and calls["verify"] == 0


@pytest.mark.parametrize("d", [32, 64])  # heads of 8: PyTorch's attention; of 16: arlm's kernel, where it is built
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_no_strategy_reads_a_cache_position_it_did_not_write(name, d, monkeypatch):
    """The engine's cache is not zeroed (only the pages written are touched): with every float tensor from
    torch.empty filled with NaN, as reused memory may be, each strategy returns what it returns over zeros
    (prompts padded to one width where the strategy takes several; beam search widens its cache)."""
    config, uses_draft = STRATEGIES[name]
    target, draft = _model(0, d=d), _model(1, layers=1, d=d)
    one = name in ("speculative", "prompt-lookup", "adaptive")
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2]] if one else [[1, 2, 3, 4, 5, 6], [7, 8]]
    run = lambda: generate(target, prompts, config, pad_id=0, draft=draft if uses_draft else None)
    expected, real, poisoned = run(), torch.empty, []

    def empty(*args, **kwargs):
        out = real(*args, **kwargs)
        if out.is_floating_point():
            poisoned.append(out.shape)
            out.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch, "empty", empty)
    got = run()
    monkeypatch.undo()
    layers, rows = target.config.n_layer, 1 if one else 2
    assert any(s[:2] == (layers, rows) and len(s) == 5 for s in poisoned)  # the engine's cache (L, B, nkv, S, hd)
    assert torch.equal(got.sequences, expected.sequences)
    if expected.scores is not None:
        assert torch.equal(got.scores, expected.scores)


def _nan_empty(monkeypatch):
    """torch.empty's float tensors filled with NaN from now on (until monkeypatch.undo), as reused memory may be."""
    real = torch.empty

    def empty(*args, **kwargs):
        out = real(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.parametrize("d", [32, 64])
def test_a_kept_cache_and_a_sliding_window_read_no_position_they_did_not_write(d, monkeypatch):
    """Beyond one call: an engine keeping its cache between calls (reuse_prefix, as a chat or the server's lane), its
    strategies in turn (beam search widening the cache, a self-draft writing past the target's positions, rollbacks,
    a bfloat16 cache), and greedy decoding sliding its window: with torch.empty's floats NaN, the same outputs."""
    from arlm.decoding.drafts import self_draft

    def turns():
        target, prompt, out = _model(0, d=d), [1, 2, 3, 1, 2, 3, 1, 2], []
        engine = Engine(target, reuse_prefix=True)
        for name, kv in [
            ("greedy", "auto"),
            ("speculative", "auto"),
            ("prompt-lookup", "auto"),
            ("sample", "bfloat16"),
            ("adaptive", "bfloat16"),
            ("beam", "bfloat16"),
            ("greedy", "auto"),
        ]:
            config = dataclasses.replace(STRATEGIES[name][0], kv_dtype=kv)
            row = generate(engine, [prompt], config, pad_id=0, draft=self_draft(target, 1)).sequences[:1]
            out += [row, engine.reused]
            prompt = prompt + row[0, len(prompt) : len(prompt) + 3].tolist() + [4, 5]  # the next turn
        small = Transformer(dataclasses.replace(target.config, block_size=16)).eval()
        config = GenerationConfig(strategy="greedy", max_new_tokens=40)
        return out + [generate(small, [[1, 2, 3], [4, 5, 6, 7]], config, pad_id=0).sequences]

    expected = turns()
    assert sum(reused > 0 for reused in expected[1:-1:2]) >= 3  # (beginnings were kept)
    _nan_empty(monkeypatch)
    got = turns()
    monkeypatch.undo()
    assert all(g == e if isinstance(e, int) else torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_only_the_compiled_step_s_cache_is_zeroed():
    """The compiled step attends over its whole static cache, masked (a NaN there would reach its output): that
    cache is zeroed; the eager one is not."""
    engine = Engine(_model())
    assert not engine.open(1, 10).zeroed
    assert engine.open(1, 10, compiled=True).zeroed
    engine.close()


def test_the_engine_frees_its_cache_and_hangs_nothing_on_the_model():
    model = _model()
    before = set(vars(model))
    engine = Engine(model)
    generate(engine, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=5))
    assert engine.cache is not None  # a caller's engine keeps its cache for the next call ...
    engine.close()
    assert engine.cache is None  # ... until closed
    generate(model, [[1, 2, 3]], GenerationConfig(strategy="beam", max_new_tokens=5))
    assert set(vars(model)) == before


@pytest.mark.parametrize("strategy", ["beam", "speculative", "prompt-lookup"])
def test_compile_is_refused_in_one_line_where_it_cannot_run(strategy):
    config = GenerationConfig(strategy=strategy, max_new_tokens=4, compile=True, temperature=0)
    with pytest.raises(ArlmError, match="compile applies to greedy and sample"):
        generate(_model(), [[1, 2]], config, draft=_model(1))


def test_compile_is_refused_for_padded_prompts_and_past_the_context():
    config = GenerationConfig(strategy="greedy", max_new_tokens=4, compile=True)
    with pytest.raises(ArlmError, match="equal length"):
        generate(_model(), [[1, 2], [3]], config)
    config.max_new_tokens = 70
    with pytest.raises(ArlmError, match="does not slide"):
        generate(_model(), [[1, 2]], config)


def test_beam_search_stops_a_hypothesis_where_should_stop_fires():
    model = _model()
    config = GenerationConfig(strategy="beam", num_beams=2, num_return_sequences=2, max_new_tokens=10)
    free = generate(model, [[1, 2, 3]], config).generated()
    assert [len(ids) for ids in free] == [10, 10]
    short = generate(model, [[1, 2, 3]], config, should_stop=lambda row, ids: len(ids) >= 3)
    assert [len(ids) for ids in short.generated()] == [3, 3]
    stop_token = free[0][3]
    stopped = generate(model, [[1, 2, 3]], config, should_stop=lambda row, ids: stop_token in ids)
    for ids in stopped.generated():
        assert stop_token not in ids[:-1]  # a hypothesis ends at its first stop


def test_beam_search_streams_the_returned_rows_once_it_ends():
    model = _model()
    config = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=6)
    columns = []
    out = generate(model, [[1, 2, 3], [4, 5, 6]], config, eos_id=7, on_token=columns.append)
    assert torch.equal(torch.stack(columns, dim=1), out.sequences[:, 3:])


def test_compile_options_on_a_gpu_are_cudagraph_trees_or_one_manual_graph():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only dicts: no CUDA needed
    trees = {"fullgraph": True, "options": {"triton.cudagraphs": True, "coordinate_descent_tuning": True}}
    assert compile_options(cuda) == compile_options(cuda, graph="trees") == trees
    assert compile_options(cuda, tuned=False)["options"]["coordinate_descent_tuning"] is False
    manual = compile_options(cuda, graph="manual")  # inductor code alone, and the marker the engine takes out
    assert manual == {
        "fullgraph": True,
        "options": {"triton.cudagraphs": False, "coordinate_descent_tuning": True},
        "graph": "manual",
    }
    assert compile_options(cuda, tuned=False, graph="manual")["options"]["coordinate_descent_tuning"] is False
    assert compile_options(cpu, graph="manual") == compile_options(cpu) == {"mode": "default", "fullgraph": True}
    with pytest.raises(ValueError, match="graph must be one of"):
        compile_options(cuda, graph="cudagraphs")


def test_a_manual_graph_marker_on_the_cpu_is_taken_out_and_the_step_stays_the_compiled_one():
    model = _model()
    config = GenerationConfig(strategy="greedy", max_new_tokens=10)
    eager = generate(model, [[1, 2, 3]], config).generated()
    engine = Engine(model, {"backend": "eager", "fullgraph": True, "graph": "manual"})
    config.compile = True
    assert generate(engine, [[1, 2, 3]], config).generated() == eager
    assert engine.static and not engine._manual and engine._graph is None  # a CUDA graph only on CUDA
    assert engine.options["graph"] == "manual"  # the caller's dict is left as given


def test_the_manual_graph_bookkeeping_follows_prefills_and_new_caches(monkeypatch):
    """The engine's side of one manual CUDA graph, on the CPU: torch.cuda's streams and graphs faked, a "replay"
    runs what the capture recorded. Greedy output equals eager's across calls, prompt lengths and a new batch."""

    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        def replay(self):
            self.owner.logits.copy_(self.owner._captured())  # what the capture recorded, over the same buffers

    for name, fake in (("device", contextlib.nullcontext), ("stream", contextlib.nullcontext), ("Stream", Stream)):
        monkeypatch.setattr(torch.cuda, name, fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", contextlib.nullcontext)  # the body runs once: the step sets pos anew
    init = engine_module.StepGraph.__init__

    def captured(self, *args):
        init(self, *args)
        self.graph.owner = self

    monkeypatch.setattr(engine_module.StepGraph, "__init__", captured)
    model = _model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # matrices drawn N(0, 1): greedy output then depends on every position (the small
        for p in model.parameters():  # default init repeats one token whatever the positions)
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator))
    engine = Engine(model, {"backend": "eager", "fullgraph": True, "graph": "manual"})
    engine.open(1, 8, compiled=True)
    engine._manual = True  # as on CUDA
    config = GenerationConfig(strategy="greedy", max_new_tokens=12)
    compiled = GenerationConfig(strategy="greedy", max_new_tokens=12, compile=True)
    graphs = []
    for prompt in ([[1, 2, 3]], [[1, 2, 3]], [[4, 5, 6, 7, 8, 9, 10]], [[7]], [[1, 2], [3, 4]]):
        assert generate(engine, prompt, compiled).generated() == generate(model, prompt, config).generated()
        assert engine.cache.length == len(prompt[0]) + 11  # the last token is not stepped
        assert int(engine._graph.pos) == engine.cache.length  # advanced by the "replays"
        graphs.append(engine._graph)
    assert graphs[0] is not None and all(g is graphs[0] for g in graphs[:4]) and graphs[4] is not graphs[0]
    engine.close()
    assert engine._graph is None
