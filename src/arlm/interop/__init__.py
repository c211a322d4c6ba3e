"""Model formats and references: arlm checkpoints, Hugging Face folders, GGUF files, and the one resolver of model
and tokenizer references (loading)."""
