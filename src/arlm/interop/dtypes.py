"""The one list of --dtype names (every command that loads a model offers these; loading.resolve_dtype reads
them). No torch here: the commands build their flags from it, so `arlm VERB --help` loads none."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16", "int8", "int4")
DTYPE_HELP = "weights: float32, bfloat16, float16, or int8 / int4 weight-only quantized (CPU)"
