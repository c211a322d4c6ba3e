"""`python -m arlm` (and `torchrun -m arlm`) runs the CLI."""

from arlm.cli import main

if __name__ == "__main__":
    code = main()
    from arlm.training.distributed import exit_worker  # after the command: `python -m arlm --help` needs no torch

    exit_worker(code)  # under torchrun: end without interpreter teardown (see exit_worker)
    raise SystemExit(code)
