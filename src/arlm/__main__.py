"""`python -m arlm` (and `torchrun -m arlm`) runs the CLI."""

import os

from arlm.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun (its import alone took 0.75 s after any command)
        from arlm.training.distributed import exit_worker  # after the command: `--help` needs no torch

        exit_worker(code)  # end without interpreter teardown (see exit_worker)
    raise SystemExit(code)
