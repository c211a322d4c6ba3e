"""The one training loop and what it needs: loss, optimizer, logging, distribution, initial weights, distillation."""
