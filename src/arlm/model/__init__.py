"""The decoder-only transformer, its attention and its KV cache."""
