"""The one list of --dtype names (every command that loads a model offers these; loading.resolve_dtype reads
them). No torch here: the commands build their flags from it, so `arlm VERB --help` loads none."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16", "int8", "int4", "mixed")
LOAD_DTYPES = ("auto", *DTYPES)  # a command's --dtype: "auto" is resolved per model file (loading.auto_dtype)
DTYPE_HELP = (
    "weights: auto (default: a GGUF file at the precision it stores, where arlm holds its layers as they are: int4 "
    "for Q4_0 / Q4_1 / Q4_K, int8 for Q8_0 / Q5_0 / Q4_0, mixed for a file of several types such as Q4_K_M, "
    "bfloat16 for BF16; float32 otherwise), float32, bfloat16, float16, int8 / int4 weight-only quantized (CPU), "
    "or mixed (a GGUF file's layers each at its own type: int4, int8, int8 from the values; CPU)"
)
