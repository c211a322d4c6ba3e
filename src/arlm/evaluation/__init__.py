"""Evaluation: perplexity and the studies."""
