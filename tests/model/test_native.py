"""arlm's kernels are built from the source on first use into the cache folder, reused after, and turned off by
ARLM_NATIVE=0 or a missing compiler (then the layers take PyTorch's kernels: tests/model/test_quant.py runs both)."""

import os
from collections import Counter

import pytest

from arlm.model import int_layout, native

needs_kernels = pytest.mark.skipif(native.library() is None, reason="this machine cannot build arlm's kernels")
kernels_build_here = pytest.mark.skipif(
    not set(native.NEEDED_FLAGS) <= native._cpu_flags() or native._compiler() is None,
    reason="this CPU or compiler is not one arlm's kernels are for",
)


@pytest.mark.slow
@needs_kernels
def test_the_library_is_built_into_an_empty_cache_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    for i in range(native.KEPT_BUILDS):  # older builds (an earlier version's): the new one pushes the oldest out
        (tmp_path / "kernels" / f"old-{i}").mkdir(parents=True)
        (tmp_path / "kernels" / f"old-{i}" / native.LIBRARY).write_bytes(b"")
    os.utime(tmp_path / "kernels" / "old-0" / native.LIBRARY, (1000, 1000))
    cc, version = native._compiler()
    built = native._build(cc, version, native._cpu_flags())
    assert built is not None and built.is_file() and built.is_relative_to(tmp_path / "kernels")
    kept = {p.name for p in (tmp_path / "kernels").iterdir()}
    assert len(kept) == native.KEPT_BUILDS and built.parent.name in kept and "old-0" not in kept
    inode = built.stat().st_ino
    assert native._build(cc, version, native._cpu_flags()) == built and built.stat().st_ino == inode  # not rebuilt
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # nothing half-written left beside it


def test_every_c_file_is_built_and_every_header_is_in_the_builds_digest():
    """A header left out of HEADERS would leave the cached library of its old text in use after an edit."""
    folder = native.SOURCES[0].parent
    assert set(native.SOURCES) == set(folder.glob("*.c"))
    assert set(native.HEADERS) == set(folder.glob("*.h"))


def test_the_cache_keeps_the_most_recently_used_builds(tmp_path):
    """Every source change or upgrade adds a build; the cache keeps the newest-used KEPT_BUILDS, and a folder whose
    build has not finished (no library yet) is left alone."""
    kernels = tmp_path / "kernels"
    for i in range(11):  # build i used at time 1000 + i, in shuffled creation order
        folder = kernels / f"build-{(i * 7) % 11}"
        folder.mkdir(parents=True)
        (folder / native.LIBRARY).write_bytes(b"")
        os.utime(folder / native.LIBRARY, (1000 + (i * 7) % 11, 1000 + (i * 7) % 11))
    (kernels / "in-progress").mkdir()
    native.prune_builds(kernels, keep=8)
    left = {p.name for p in kernels.iterdir()}
    assert left == {f"build-{i}" for i in range(3, 11)} | {"in-progress"}


@pytest.mark.slow
@kernels_build_here
def test_the_kernels_compile_where_the_cpu_and_compiler_allow(tmp_path, monkeypatch):
    """A C file that stops compiling would only turn the kernels off (PyTorch's run instead, tests that need ours skip):
    where this CPU and compiler can build them, they must build, with no warning."""
    import subprocess

    cc, _ = native._compiler()
    sources = list(map(str, native.SOURCES))
    done = subprocess.run(
        [cc, *native.FLAGS, "-Wall", *sources, "-o", str(tmp_path / "lib.so"), "-lm"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


@kernels_build_here
@pytest.mark.parametrize("source", native.SOURCES, ids=lambda path: path.name)
def test_the_prefetches_a_kernel_asks_for_reach_its_machine_code(source):
    """A compiler may drop a prefetch: GCC 12 found a helper holding only prefetches "pure" and deleted its calls,
    which left quantized.c's one-row products reading at ~60% of the memory's speed. Every prefetch hint a file writes
    must survive into its assembly."""
    import subprocess

    text = source.read_text()
    cc, _ = native._compiler()
    flags = [flag for flag in native.FLAGS if flag not in ("-shared", "-fPIC")]
    done = subprocess.run([cc, *flags, "-S", str(source), "-o", "-"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    emitted = Counter(line.split()[0] for line in done.stdout.splitlines() if line.strip().startswith("prefetch"))
    asked = text.count("_mm_prefetch(")  # each call site, inlined, leaves one instruction or more (unrolled)
    assert sum(emitted.values()) >= asked, f"{source.name}: {asked} prefetch calls written, {dict(emitted)} emitted"
    for hint in ("T0", "T1", "T2", "NTA"):  # and each hint written is one the code holds
        if f"_MM_HINT_{hint}" in text:
            assert emitted[f"prefetch{hint.lower()}"] > 0, f"{source.name}: no prefetch{hint.lower()} emitted"


def test_a_missing_compiler_or_a_failed_build_gives_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native._compiler() is None
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"did not compile with false \(exit 1\)"):
        assert native._build("false", "a compiler that fails", set()) is None


def test_a_failed_build_says_the_compilers_first_error(tmp_path, monkeypatch):
    """The model then runs on PyTorch's kernels, several times slower: the user hears why, in one warning."""
    cc = tmp_path / "cc"
    cc.write_text(
        "#!/bin/sh\necho 'In file included from kernels.c:1:' >&2\n"
        "echo 'quantized.c:9:1: error: unknown type name nope' >&2\necho '1 error generated.' >&2\nexit 1\n"
    )
    cc.chmod(0o755)
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning) as caught:
        assert native._build(str(cc), "a compiler that stops at an error", set()) is None
    (message,) = [str(w.message) for w in caught]
    assert "quantized.c:9:1: error: unknown type name nope" in message and "PyTorch's kernels run instead" in message
    assert [p.name for p in (tmp_path / "cache" / "kernels").iterdir() for p in p.iterdir()] == []  # nothing half-built


@needs_kernels
def test_arlm_native_0_turns_them_off(monkeypatch):
    monkeypatch.setenv("ARLM_NATIVE", "0")
    assert not native.available() and not native.amx_ready()
    monkeypatch.setenv("ARLM_NATIVE", "1")
    assert native.available()


@needs_kernels
@pytest.mark.slow
def test_torch_compile_sees_each_kernel_as_one_op():
    """A compiled graph (fullgraph: no break) calls the same kernels as eager code, with the same bits."""
    import torch

    from arlm.model.inference import NativeLinear, NativeRMSNorm
    from arlm.model.quant import Int4Linear, Int8Linear
    from arlm.model.transformer import RMSNorm

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 64, bias=False)
    layers = [NativeRMSNorm(RMSNorm(64, 1e-5)), Int8Linear.from_float(linear), Int4Linear.from_float(linear, 32)]
    layers += [NativeLinear(linear), NativeLinear(linear, pack=False), NativeLinear(linear.to(torch.bfloat16))]

    def run(x):
        outs = [layer(x) for layer in layers[:5]]
        return outs + [layer(x.to(torch.bfloat16)) for layer in layers[5:]]

    x = torch.randn(3, 64)
    with torch.no_grad():
        eager, compiled = run(x), torch.compile(run, fullgraph=True, backend="inductor")(x)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


@needs_kernels
def test_tensors_the_kernels_would_misread_are_refused():
    """The kernels read raw memory: a wrong dtype, width or layout is one clear error, not a read past a tensor."""
    import torch

    from arlm.errors import ArlmError

    packed, scales = int_layout.pack_int8(torch.zeros(8, 32, dtype=torch.int8)), int_layout.pad_outputs(torch.ones(8))
    assert native.int8_mm(torch.ones(2, 32), packed, scales, 8).shape == (2, 8)
    wrong = [(torch.ones(2, 32).bfloat16(), scales), (torch.ones(2, 64), scales), (torch.ones(2, 32), scales.half()),
             (torch.ones(32, 2).t(), scales), (torch.ones(2, 32), scales[:8])]  # fmt: skip
    for x, s in wrong:
        with pytest.raises(ArlmError, match="arlm's (CPU|int8) kernel"):
            native.int8_mm(x, packed, s, 8)
    with pytest.raises(ArlmError, match="contiguous"):
        native.rms_norm(torch.ones(2, 32), torch.ones(16), 1e-5)
    weight = native.pack_f32(torch.ones(20, 32))  # (2, 32, 16)
    assert torch.equal(native.f32p_mm(torch.ones(2, 32), weight, 20), torch.full((2, 20), 32.0))
    misread = [(torch.ones(2, 32), weight, 33), (torch.ones(2, 32), weight, 16), (torch.ones(2, 64), weight, 20),
               (torch.ones(2, 32), weight.reshape(2, 64, 8), 20), (torch.ones(2, 32), weight.double(), 20)]  # fmt: skip
    for x, packed, outputs in misread:
        with pytest.raises(ArlmError, match="arlm's (CPU|float32) kernel"):
            native.f32p_mm(x, packed, outputs)
    with pytest.raises(ArlmError, match="float32 kernel cannot read a 40x32 weight"):
        native.linear_weights(4, weight, shape=(40, 32))


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_swiglu_is_pytorchs_silu_times_up(dtype):
    """silu(gate) * up with PyTorch's roundings (bfloat16: silu rounded, then the product): float32 within its
    exp's last bits; bfloat16 bit-equal but where exp's last bit moves a value across a rounding boundary."""
    import torch
    import torch.nn.functional as F

    h = (torch.randn(7, 2 * 300, generator=torch.Generator().manual_seed(0)) * 4).to(getattr(torch, dtype))
    ours = native.swiglu(h)  # (7, 300)
    gate, up = h.chunk(2, dim=-1)
    theirs = F.silu(gate) * up
    if dtype == "float32":
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    else:
        assert (ours == theirs).float().mean() > 0.995
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-7, atol=0)


def test_a_build_says_why_it_waits_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning):  # the failure itself is a warning (above), not a line of progress
        assert native._build("false", "a compiler that fails", set()) is None
    assert capsys.readouterr().err == ""  # output captured (a pipe, a file): the command's own lines alone
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with pytest.warns(RuntimeWarning):
        assert native._build("false", "a compiler that fails, again", set()) is None
    assert "compiling its CPU kernels" in capsys.readouterr().err


def test_a_cpu_the_kernels_are_for_without_a_compiler_is_warned_and_cc_may_hold_arguments(tmp_path, monkeypatch):
    """No compiler at all ran PyTorch's kernels, several times slower, without a word (a failed build is warned); a CC
    such as "ccache gcc" was run as one program's name and counted as none."""
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_cpu_flags", lambda: set(native.NEEDED_FLAGS))
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"no C compiler found; install gcc or set CC"):
            assert native.library() is None
    finally:
        native.library.cache_clear()
    monkeypatch.setenv("CC", "env cc")  # a program and its argument
    assert native._compiler() is not None


def test_a_kernel_cache_that_cannot_be_made_is_warned_not_a_traceback(tmp_path, monkeypatch):
    """A read-only or missing home (or a bad ARLM_CACHE) crashed generate and train in a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ARLM_CACHE", str(blocker / "cache"))  # (a folder under a file cannot be made)
    with pytest.warns(RuntimeWarning, match=r"its cache .* cannot be made: .*; set ARLM_CACHE"):
        assert native._build("cc", "any", set()) is None
