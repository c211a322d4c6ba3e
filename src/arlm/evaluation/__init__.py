"""Evaluation: measures of a model on data: perplexity, calibration, exposure bias, context use, in-context learning."""
