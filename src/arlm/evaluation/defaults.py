"""The evaluations' defaults that the commands' flags and signatures show, with no torch to import (so
`arlm eval ... --help` loads none): calibration's bins, in-context learning's numbers of demonstrations."""

from __future__ import annotations

N_BINS = 15  # equal-width confidence bins of calibration
DEFAULT_SHOTS = (0, 1, 2, 4, 8)  # demonstrations in the prompt, one evaluation each
