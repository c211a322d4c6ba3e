"""The OpenAI-compatible server: a scheduler that batches requests continuously, the web app, the playground."""
