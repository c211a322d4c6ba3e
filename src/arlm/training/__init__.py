"""The one training loop and what it needs: loss, optimizer, checkpoints, logging, distribution."""
