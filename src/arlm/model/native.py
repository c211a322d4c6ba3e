"""arlm's own CPU kernels for small-batch matrix products (kernels.c: float32; bf16_mm.c: bfloat16; quantized.c: int8,
int4), cached attention (attention.c) and whole decoder blocks (block.c), built on first use.

Decoding multiplies 1-32 rows by every weight matrix: a product bound by reading the weights. PyTorch's kernels for that
shape read them slowly (oneDNN's one-row bfloat16 `linear`: ~7 GB/s here) or cost 2-4x their one-row time at 5-8 rows
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, which are also fast only with bfloat16 inputs, which they round
to). Ours stream each weight once per call for every row, multiply int8 / int4 codes by the rows read at 16 bits with
integer dot products, and are batch-invariant by construction (the C files say how). The attention kernel does a
layer's RoPE, cache write and attention of a decoding step or verification in one call, where PyTorch takes ~20 ops and
one SDPA call per query; the block kernel runs a Llama block's ten steps on those kernels in one call, and every block
of a model in one call (model/inference.py's FusedBlock, FusedBlocks), so a token costs a few Python calls instead of
~1,000 small operations. docs/perf.md has the side-by-side figures.

The C files are compiled by `$CC` (else `cc`; `-O3 -march=native -fopenmp`) into `$ARLM_CACHE/kernels/<digest>/`
(default `~/.cache/arlm`) when first needed (6-7 s on 2 cores); the digest covers the sources, the compiler and the
CPU's flags, so a changed file or machine builds afresh (the cache keeps the 8 most recently used builds). It needs
x86-64 with AVX2, FMA and F16C (Haswell, Zen and later) and a compiler with OpenMP, and uses what more the CPU has:
AVX-512 (16 lanes instead of 8; with VNNI, the int products on vpdpbusd) and AMX where Linux lets us use it (bfloat16
products; int products from a few rows). Where a need is missing, or with ARLM_NATIVE=0, `available()` is False and the
layers use PyTorch's kernels (model/quant.py, model/inference.py); a build that fails says so (a RuntimeWarning with the
compiler's first error), since the model then runs several times slower.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from arlm.errors import ArlmError

HERE = Path(__file__).parent  # the kernels' C sources and headers
SOURCES = tuple(HERE / f"{n}.c" for n in ("kernels", "bf16_mm", "quantized", "attention", "block"))
HEADERS = tuple(HERE / n for n in ("bf16.h", "kernels.h", "quantized_amx.h", "quantized_avx2.h", "rows.h", "simd.h"))
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
LIBRARY = "libarlm_quant.so"  # a build's file, in its folder of the cache
KEPT_BUILDS = 8  # builds the cache keeps (the most recently used): each source change or upgrade adds one
NEEDED_FLAGS = ("avx2", "fma", "f16c")  # the least; AVX-512 (F, BW, VNNI) and AMX where present (simd.h, quantized.c)
_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
INT8_ROW_GROUP = 64  # inputs per 16-bit scale of an int8 product's rows, where it divides K (else 32; quantized.c)
Q8_GROUP = 32  # inputs per scale of GGUF's Q8_0 blocks, and per 16-bit scale of their products' rows (kind 5)
ROW_DTYPES = (torch.float32, torch.bfloat16)  # rows (and caches) the attention, SwiGLU and block kernels read


class Attention(ctypes.Structure):
    """kernels.h's Attention: one cached attention call's angles, cache, rows and mask."""

    _fields_ = [(name, _P) for name in ("cos", "sin", "ck", "cv", "rows", "starts", "allowed")]
    _fields_ += [(name, _L) for name in ("start", "rope_stride", "mask_stride", "S", "B", "T", "nh", "nkv", "hd", "L")]
    _fields_ += [(name, _I) for name in ("xbf", "tbf", "cbf")]


class LinearWeights(ctypes.Structure):
    """kernels.h's Linear: a weight on a kernel (kind 0 bfloat16 tiles, 1 int8, 2 int4, 3 float32, 4 float32 packed,
    5 int8 in groups of 32)."""

    _fields_ = [("w", _P), ("scale", _P), ("N", _L), ("K", _L), ("G", _L), ("kind", _I)]


class BlockWeights(ctypes.Structure):
    """kernels.h's Block: a Llama block's norms and Linears."""

    _fields_ = [("norm1", _P), ("norm2", _P)] + [(name, LinearWeights) for name in ("qkv", "proj", "up", "down")]
    _fields_ += [("eps", ctypes.c_float)]


def available() -> bool:
    """Whether the quantized layers built now use arlm's kernels (ARLM_NATIVE=0 turns them off)."""
    return os.environ.get("ARLM_NATIVE", "1") != "0" and library() is not None


def prepare_compile() -> None:
    """Call before torch.compile: `available()` becomes a constant to compiled graphs (assume_constant_result); not at
    import, where it would import torch._dynamo, ~1.1 s added to every command's start."""
    global available
    available = torch.compiler.assume_constant_result(available)


def amx_ready() -> bool:
    """Whether the kernels run on AMX tiles here (the CPU has them and Linux lets this process use them)."""
    return available() and library().amx


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _compiler() -> tuple[str, str] | None:
    """The C compiler and its version line, or None where there is none."""
    cc = os.environ.get("CC", "cc")
    try:
        done = subprocess.run([*shlex.split(cc), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, ValueError, subprocess.SubprocessError):  # (none there, or a CC that does not parse)
        return None
    return (cc, done.stdout.splitlines()[0]) if done.returncode == 0 and done.stdout else None


def _build(cc: str, version: str, flags: set[str], sources: Path = HERE) -> Path | None:
    """The library compiled from the files named as SOURCES and HEADERS in `sources`, in the cache (compiled there
    first if missing), or None if it does not compile."""
    text = b"".join((sources / path.name).read_bytes() for path in SOURCES + HEADERS)
    digest = hashlib.sha256(text + version.encode() + " ".join(FLAGS + tuple(sorted(flags))).encode())
    folder = Path(os.environ.get("ARLM_CACHE", Path.home() / ".cache" / "arlm")) / "kernels" / digest.hexdigest()[:16]
    target = folder / LIBRARY
    if target.exists():
        with contextlib.suppress(OSError):  # marked as used (a read-only cache stays as it is)
            os.utime(target)
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # (no home, a read-only one, a bad ARLM_CACHE: PyTorch's kernels, said, not a traceback)
        return _not_built(cc, f"its cache {folder} cannot be made: {error.strerror}; set ARLM_CACHE")
    if sys.stderr.isatty():  # a person waits: say why (a terminal only, so captured output stays the command's own)
        print(f"arlm: compiling its CPU kernels for this machine into {folder} (once, a few seconds)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # built aside, then moved in whole: no half-written file
        built = Path(scratch) / target.name
        try:
            files = [str(sources / path.name) for path in SOURCES]
            command = [*shlex.split(cc), *FLAGS, *files, "-o", str(built), "-lm"]
            done = subprocess.run(command, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            return _not_built(cc, str(error))
        if done.returncode != 0:
            return _not_built(cc, _first_error(done.stderr.decode(errors="replace")) or f"exit {done.returncode}")
        os.replace(built, target)
    prune_builds(folder.parent)
    return target


def _first_error(output: str) -> str:
    """The first line of a compiler's output that says `error` (else its last line), empty for no output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")


def _not_built(cc: str, reason: str) -> None:
    """Warn that the kernels did not compile (the layers then run PyTorch's kernels, several times slower) -> None."""
    warnings.warn(
        f"arlm: its CPU kernels did not compile with {cc} ({reason}); PyTorch's kernels run instead, several times "
        "slower (ARLM_NATIVE=0 silences this)",
        RuntimeWarning,
        stacklevel=4,
    )


def prune_builds(kernels: Path, keep: int = KEPT_BUILDS) -> None:
    """Remove all but the `keep` most recently used builds under `kernels` (a build's library is touched when used;
    a folder still being built has none yet and stays). Another process that had one loaded keeps its mapping."""
    used = {}
    for folder in kernels.iterdir():
        with contextlib.suppress(OSError):  # no library (yet), or another process removed it meanwhile
            used[folder] = (folder / LIBRARY).stat().st_mtime
    for old in sorted(used, key=used.get, reverse=True)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where this machine cannot build them (module docstring)."""
    return load_library(HERE)


def load_library(sources: Path) -> ctypes.CDLL | None:
    """The kernels of the C files in `sources` (this package's; another revision's for forward_ab.py), or None."""
    flags = _cpu_flags()
    compiler = _compiler()
    capable = platform.machine() == "x86_64" and set(NEEDED_FLAGS) <= flags
    if capable and compiler is None:  # (a CPU the kernels are for, without a compiler: said, as a failed build is)
        _not_built(os.environ.get("CC", "cc"), "no C compiler found; install gcc or set CC")
    path = _build(*compiler, flags, sources) if capable and compiler is not None else None
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    lib.arlm_int_mm.argtypes = [_P, ctypes.POINTER(LinearWeights), _P, _L, _I]
    lib.arlm_int_rows.argtypes = [_P, _P, _L, _L, _I]
    lib.arlm_f32_mm.argtypes = lib.arlm_f32p_mm.argtypes = lib.arlm_bf16_mm.argtypes = [_P, _P, _P, _L, _L, _L, _I]
    lib.arlm_rms_norm.argtypes = lib.arlm_rms_norm_bf16.argtypes = [_P, _P, _P, _L, _L, ctypes.c_float]
    lib.arlm_attend.argtypes = [ctypes.POINTER(Attention), _P, _P, _I]
    lib.arlm_block.argtypes = [ctypes.POINTER(BlockWeights), _P, _L, ctypes.POINTER(Attention), _I]
    lib.arlm_blocks.argtypes = [ctypes.POINTER(BlockWeights), _L, _P, _L, ctypes.POINTER(Attention), _L, _I]
    lib.arlm_swiglu.argtypes = [_P, _P, _L, _L, _I, _I]
    for name in ("int_mm", "int_rows", "f32_mm", "f32p_mm", "bf16_mm", "rms_norm", "rms_norm_bf16", "attend", "block"):
        getattr(lib, f"arlm_{name}").restype = None
    lib.arlm_blocks.restype = lib.arlm_swiglu.restype = None
    lib.amx = lib.arlm_amx_init() == 0  # compiled where the CPU has AMX and Linux lets us use it
    return lib


def _row_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel taking float32 or bfloat16 rows expects of t: its own if one of those, else float32."""
    return t.dtype if t.dtype in ROW_DTYPES else torch.float32


def _expect(dtype: torch.dtype, *tensors: torch.Tensor, inputs: int | None = None) -> None:
    """Refuse tensors a kernel would read wrongly (it reads raw memory: another dtype, layout or width reads past
    them); `inputs`: the width the first one's rows must have."""
    wrong = any(t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu" for t in tensors)
    if wrong or (inputs is not None and tensors[0].shape[-1] != inputs):
        found = ", ".join(f"{t.dtype} {tuple(t.shape)}" for t in tensors)
        raise ArlmError(f"arlm's CPU kernel needs contiguous {dtype} CPU tensors of matching sizes, got {found}")


def _compilable(schema: str, fake: Callable[..., torch.Tensor]) -> Callable[[Callable], Callable]:
    """A kernel call that torch.compile sees as one opaque custom op `arlm::<name><schema>` (`fake` gives its
    output's shape and dtype) and eager code calls directly (a custom op's dispatch, ~20 us, costs more than most
    products)."""

    def wrap(call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        op = torch.library.custom_op(f"arlm::{call.__name__}", call, mutates_args=(), schema=schema)
        op.register_fake(fake)

        @functools.wraps(call)
        def either(*args: torch.Tensor | int | float) -> torch.Tensor:
            return op(*args) if torch.compiler.is_compiling() else call(*args)

        return either

    return wrap


@_compilable(
    "(Tensor x, Tensor packed, Tensor scales, int outputs) -> Tensor",
    lambda x, packed, scales, outputs: x.new_empty(len(x), outputs),
)
def int8_mm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, outputs: int) -> torch.Tensor:
    """x (M, K) float32 times (codes * scales[:, None])^T for int8 codes (N, K) laid out by `pack_int8` and float32
    scales (`int_layout.pad_outputs`) -> (M, N = outputs), the rows read at 16 bits (quantized.c)."""
    _expect(torch.uint8, packed)
    _expect(torch.float32, x, scales)
    return _int_mm(x, linear_weights(1, packed, scales, shape=(outputs, x.shape[1])))


@_compilable(
    "(Tensor x, Tensor packed, Tensor levels, int group) -> Tensor",
    lambda x, packed, levels, group: x.new_empty(len(x), 16 * len(packed)),
)
def int4_mm(x: torch.Tensor, packed: torch.Tensor, levels: torch.Tensor, group: int) -> torch.Tensor:
    """x (M, K) float32 times W^T, W[n, k] = q * scale[n, g] + low[n, g] (g = k // group) for 4-bit codes q laid out
    by `int_layout.pack_int4` and float16 scales and lows by `tile_levels` -> (M, N), the rows read at 16 bits."""
    _expect(torch.uint8, packed)
    _expect(torch.float32, x)
    return _int_mm(x, linear_weights(2, packed, levels, group, shape=(16 * len(packed), x.shape[1])))


@_compilable(
    "(Tensor x, Tensor packed, Tensor levels) -> Tensor",
    lambda x, packed, levels: x.new_empty(len(x), 16 * len(packed)),
)
def q8_mm(x: torch.Tensor, packed: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """x (M, K) float32 times W^T, W[n, k] = q * scale[n, g] (g = k // 32, GGUF's Q8_0) for int8 codes q laid out by
    `int_layout.pack_int8` and float16 scales by `tile_scales` -> (M, N), the rows read at 16 bits (quantized.c)."""
    _expect(torch.uint8, packed)
    _expect(torch.float32, x)
    return _int_mm(x, linear_weights(5, packed, levels, Q8_GROUP, shape=(16 * len(packed), x.shape[1])))


def _int_mm(x: torch.Tensor, weights: LinearWeights) -> torch.Tensor:
    """x (M, K) float32 times an int8 / int4 weight on quantized.c's kernel -> (M, N)."""
    y = torch.empty(x.shape[0], weights.N)  # (M, N)
    library().arlm_int_mm(x.data_ptr(), ctypes.byref(weights), y.data_ptr(), x.shape[0], torch.get_num_threads())
    return y


def int_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """Rows x (M, K) float32 as the int8 / int4 kernel reads them: each value at 16 bits of its group's largest, groups
    of `group` (32 or 64) inputs (quantized.c) -> (M, K) float32."""
    _expect(torch.float32, x)
    if group not in (32, 64):
        raise ArlmError(f"the int kernels read rows in groups of 32 or 64 inputs, not {group}")
    y = torch.empty_like(x)
    library().arlm_int_rows(x.data_ptr(), y.data_ptr(), *x.shape, group)
    return y


@_compilable("(Tensor x, Tensor weight) -> Tensor", lambda x, weight: x.new_empty(len(x), len(weight)))
def f32_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) float32 times W^T for a float32 W (N, K) -> (M, N)."""
    _expect(torch.float32, x, weight, inputs=weight.shape[1])
    y = torch.empty(x.shape[0], weight.shape[0])  # (M, N)
    library().arlm_f32_mm(
        x.data_ptr(), weight.data_ptr(), y.data_ptr(), *x.shape[:1], *weight.shape, torch.get_num_threads()
    )
    return y


PACK = 16  # outputs to a line of a packed float32 weight (kernels.c)


def pack_f32(weight: torch.Tensor) -> torch.Tensor:
    """A float32 weight (N, K) as arlm_f32p_mm reads it: (ceil(N/16), K, 16), outputs past N zero."""
    out_features, in_features = weight.shape
    padded = weight.new_zeros(-(-out_features // PACK) * PACK, in_features)  # (N padded, K)
    padded[:out_features] = weight
    return padded.reshape(-1, PACK, in_features).transpose(1, 2).contiguous()


def _expect_packed(packed: torch.Tensor, outputs: int, inputs: int) -> None:
    """Refuse a packing that is not `pack_f32` of an (outputs, inputs) weight (the kernel reads raw memory)."""
    _expect(torch.float32, packed)
    if tuple(packed.shape) != (-(-outputs // PACK), inputs, PACK):
        raise ArlmError(
            f"arlm's float32 kernel cannot read a {outputs}x{inputs} weight from a {tuple(packed.shape)} packing"
        )


def unpack_f32(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The (N, K) weight `pack_f32` laid out."""
    return packed.transpose(1, 2).reshape(-1, packed.shape[1])[:out_features]


@_compilable(
    "(Tensor x, Tensor packed, int outputs) -> Tensor", lambda x, packed, outputs: x.new_empty(len(x), outputs)
)
def f32p_mm(x: torch.Tensor, packed: torch.Tensor, outputs: int) -> torch.Tensor:
    """x (M, K) float32 times W^T for W (outputs, K) held as `pack_f32(W)` -> (M, outputs)."""
    _expect(torch.float32, x, inputs=packed.shape[1])
    _expect_packed(packed, outputs, packed.shape[1])
    y = torch.empty(x.shape[0], outputs)  # (M, N)
    library().arlm_f32p_mm(
        x.data_ptr(), packed.data_ptr(), y.data_ptr(), x.shape[0], outputs, packed.shape[1], torch.get_num_threads()
    )
    return y


def bf16_tiles(weight: torch.Tensor) -> torch.Tensor:
    """A bfloat16 weight (N, K), N and K multiples of 32, laid out as AMX reads it: (N/16, K/32, 16 k-pairs, 16, 2)."""
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features // 16, 16, in_features // 32, 16, 2)  # (N/16, n, K/32, pair, 2)
    return blocks.permute(0, 2, 3, 1, 4).contiguous()


def bf16_weight(tiles: torch.Tensor) -> torch.Tensor:
    """The (N, K) weight `bf16_tiles` laid out."""
    n_blocks, k_blocks = tiles.shape[:2]
    return tiles.permute(0, 3, 1, 2, 4).reshape(16 * n_blocks, 32 * k_blocks)


@_compilable("(Tensor x, Tensor tiles) -> Tensor", lambda x, tiles: x.new_empty(len(x), 16 * tiles.shape[0]))
def bf16_mm(x: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """x (M, K) bfloat16 times W^T for W held as `bf16_tiles(W)` -> (M, N) bfloat16 (sums in float32)."""
    _expect(torch.bfloat16, x, tiles, inputs=32 * tiles.shape[1])
    rows, outputs, inputs = x.shape[0], 16 * tiles.shape[0], 32 * tiles.shape[1]
    y = torch.empty(rows, outputs, dtype=torch.bfloat16)  # (M, N)
    library().arlm_bf16_mm(x.data_ptr(), tiles.data_ptr(), y.data_ptr(), rows, outputs, inputs, torch.get_num_threads())
    return y


@_compilable("(Tensor x, Tensor weight, float eps) -> Tensor", lambda x, weight, eps: torch.empty_like(x))
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of rows x (M, D) with weight (D,), both float32 or both bfloat16 (normed, rounded, then weighted, as a
    bfloat16 model does) -> (M, D)."""
    _expect(_row_dtype(x), x, weight, inputs=len(weight))
    y = torch.empty_like(x)
    norm = library().arlm_rms_norm if x.dtype == torch.float32 else library().arlm_rms_norm_bf16
    norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], eps)
    return y


def attention_call(
    rows: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
    start: int | torch.Tensor,
    slots: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[Attention, list[torch.Tensor]]:
    """The arguments of one cached attention call for new tokens' rows (B, T, ...) of dtype float32 or bfloat16 (their
    q, k, v in `attend`): rope: cos, sin (B or 1, T, hd) of their positions, float32 or the rows' dtype; keys, values:
    a layer's cache (R, nkv, L, hd), written at each row's positions start.. (an int, or a (B,) long tensor with
    slots: row b in cache row slots[b]); allowed: bool (B or 1, T, S) keys each query may attend (None: all up to its
    own). Returns the struct and the tensors it points into (keep them alive until the call returns)."""
    B, T = rows.shape[:2]
    kv_heads, L, hd = keys.shape[1:]
    cos, sin = rope
    _expect(_row_dtype(rows), rows)
    _expect(_row_dtype(keys), keys, values)
    _expect(cos.dtype if cos.dtype in (torch.float32, rows.dtype) else torch.float32, cos, sin, inputs=hd)
    ends = start + T if isinstance(start, int) else int(start.max()) + T
    if ends > L or hd % 16 or hd > 256 or heads % kv_heads or not (len(cos) == B or len(cos) == 1):
        raise ArlmError(f"arlm's attention kernel cannot hold {ends} positions in {L}, or heads of {hd} values")
    call = Attention(cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(), None, None, None, 0)
    kept = [cos, sin]  # (the cache is the caller's: kept alive by it)
    if allowed is not None:
        mask = allowed.contiguous().view(torch.uint8)  # (B or 1, T, S)
        call.allowed, call.S, call.mask_stride = (
            mask.data_ptr(),
            mask.shape[-1],
            T * mask.shape[-1] if len(mask) > 1 else 0,
        )
        kept.append(mask)
    if slots is None:
        call.start = start
    else:
        slots, starts = slots.contiguous(), start.contiguous()
        call.rows, call.starts = slots.data_ptr(), starts.data_ptr()
        kept += [slots, starts]
    call.rope_stride = T * hd if len(cos) > 1 else 0
    call.B, call.T, call.nh, call.nkv, call.hd, call.L = B, T, heads, kv_heads, hd, L
    call.xbf, call.tbf, call.cbf = (int(t.dtype == torch.bfloat16) for t in (rows, cos, keys))
    return call, kept


def attend(qkv: torch.Tensor, call: Attention) -> torch.Tensor:
    """Cached attention of a few new tokens in one call (attention.c): qkv (B, T, (heads + 2 nkv) hd), `call` from
    `attention_call` for these rows -> (B, T, heads hd)."""
    _expect(torch.bfloat16 if call.xbf else torch.float32, qkv, inputs=(call.nh + 2 * call.nkv) * call.hd)
    out = qkv.new_empty(call.B, call.T, call.nh * call.hd)  # (B, T, heads hd)
    library().arlm_attend(ctypes.byref(call), qkv.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


def linear_weights(
    kind: int,
    weight: torch.Tensor,
    scales: torch.Tensor | None = None,
    group: int = 0,
    shape: tuple[int, int] | None = None,
) -> LinearWeights:
    """A Linear for `block` or `_int_mm`: kind 0 bfloat16 `bf16_tiles`, 1 int8 `pack_int8` codes with `pad_outputs`
    float32 scales, 2 int4 `pack_int4` codes with `tile_levels` float16 scales and lows per group, 3 float32 (N, K),
    4 float32 `pack_f32`, 5 int8 `pack_int8` codes with `tile_scales` float16 scales per group of 32 (the int layouts:
    model/int_layout.py); shape: the weight's (N, K) (kinds 1, 2, 4 and 5, whose layouts pad it)."""
    dtypes = {0: torch.bfloat16, 1: torch.uint8, 2: torch.uint8, 3: torch.float32, 4: torch.float32, 5: torch.uint8}
    _expect(dtypes[kind], weight)
    if kind in (1, 2, 5):
        _expect(torch.float32 if kind == 1 else torch.float16, scales)
        N, K = shape
        tiles = weight.shape[:2] == (-(-N // 16), -(-K // 32))
        levels = {1: (16 * len(weight),), 2: (len(weight), K // max(group, 1), 2, 16), 5: (len(weight), K // 32, 16)}
        levels = levels[kind]
        if not tiles or tuple(scales.shape) != levels or (kind != 1 and (K % group or N % 16)):
            raise ArlmError(f"arlm's int{4 if kind == 2 else 8} kernel cannot read a {N}x{K} weight from these codes")
    elif kind == 4:
        N, K = shape
        _expect_packed(weight, N, K)
    else:
        N, K = (16 * weight.shape[0], 32 * weight.shape[1]) if kind == 0 else (weight.shape[0], weight.shape[1])
    group = INT8_ROW_GROUP if kind == 1 else group  # int8: its rows' group (int4: its levels', which its rows take)
    return LinearWeights(weight.data_ptr(), None if scales is None else scales.data_ptr(), N, K, group, kind)


def block_weights(norms: tuple[torch.Tensor, torch.Tensor], linears: list[LinearWeights], eps: float) -> BlockWeights:
    """A block for `block`: its two RMSNorm weights (C,) and its qkv, proj, up (gate and up) and down Linears."""
    _expect(_row_dtype(norms[0]), *norms)
    return BlockWeights(norms[0].data_ptr(), norms[1].data_ptr(), *linears, eps)


def block(weights: BlockWeights, x: torch.Tensor, call: Attention) -> torch.Tensor:
    """A Llama block's forward (block.c) on rows x (B, T, C) of the dtype its weights were packed for, attention by
    `call` (`attention_call` for these rows) -> (B, T, C)."""
    _expect(torch.bfloat16 if call.xbf else torch.float32, x, inputs=weights.qkv.K)
    out = x.clone()  # (B, T, C), replaced in place by the kernel
    library().arlm_block(
        ctypes.byref(weights), out.data_ptr(), call.B * call.T, ctypes.byref(call), torch.get_num_threads()
    )
    return out


def blocks(weights: ctypes.Array, x: torch.Tensor, call: Attention, layer_bytes: int) -> torch.Tensor:
    """Llama blocks in order (block.c), as `block` one after another: weights, an array of BlockWeights; `call` for
    the first, whose cache layer each next block's is `layer_bytes` on from -> (B, T, C)."""
    _expect(torch.bfloat16 if call.xbf else torch.float32, x, inputs=weights[0].qkv.K)
    out = x.clone()  # (B, T, C), replaced in place by the kernel
    library().arlm_blocks(
        weights, len(weights), out.data_ptr(), call.B * call.T, ctypes.byref(call), layer_bytes, torch.get_num_threads()
    )
    return out


@_compilable("(Tensor h) -> Tensor", lambda h: h.new_empty(*h.shape[:-1], h.shape[-1] // 2))
def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for rows h (..., 2F) = [gate, up], float32 or bfloat16 (each op's result rounded to it, as
    PyTorch's ops) -> (..., F)."""
    _expect(_row_dtype(h), h)
    out = h.new_empty(*h.shape[:-1], h.shape[-1] // 2)  # (..., F)
    rows = h.numel() // h.shape[-1] if h.numel() else 0
    xbf = int(h.dtype == torch.bfloat16)
    library().arlm_swiglu(h.data_ptr(), out.data_ptr(), rows, h.shape[-1] // 2, xbf, torch.get_num_threads())
    return out
