"""The evaluations' defaults that the commands' flags and signatures show, with no torch to import (so
`arlm eval ... --help` loads none): calibration's bins, in-context learning's numbers of demonstrations."""

from __future__ import annotations

N_BINS = 15  # equal-width confidence bins of calibration
DEFAULT_SHOTS = (0, 1, 2, 4, 8)  # demonstrations in the prompt, one evaluation each
SPLIT_BLOCK = 1024  # the longest block a split is scored in by default (perplexity, calibration)
LOGITS_BUDGET = 1 << 28  # the logits one scoring forward holds at most, in values (1 GiB in float32), if a row fits
