"""The machine a figure was measured on, for every benchmark's header (no torch import: the load generator of
benchmarks/serve_load.py uses it too)."""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flags named in the header, widest first: what arlm's kernels (model/native.py) run on
VECTOR_FLAGS = (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("amx_tile", "AMX"))


def _fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo on Linux, then its family and model numbers and vector instructions
    (a virtual machine's name, e.g. "AMD EPYC", often omits the generation); platform's name where that is missing."""
    cpuinfo = Path("/proc/cpuinfo")
    fields = _fields(cpuinfo.read_text(encoding="utf-8", errors="replace")) if cpuinfo.exists() else {}
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vectors = [name for flag, name in VECTOR_FLAGS if flag in flags] or (["AVX2"] if "avx2" in flags else [])
    details = [f"family {fields['cpu family']}, model {fields['model']}"] if "cpu family" in fields else []
    details += [", ".join(vectors)] if vectors else []
    return fields["model name"] + (f" ({'; '.join(details)})" if details else "")
