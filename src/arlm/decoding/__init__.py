"""Decoding: logits processors, greedy/sampling, beam search, speculative decoding."""
