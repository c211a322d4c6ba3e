"""Interoperability: Hugging Face folders and GGUF files."""
