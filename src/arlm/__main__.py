"""`python -m arlm` (and `torchrun -m arlm`) runs the CLI."""

from arlm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
