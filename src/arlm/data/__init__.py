"""Data: corpus sources, normalization, splitting, tokenizers, shards and batches."""
