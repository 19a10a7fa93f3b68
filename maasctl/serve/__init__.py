"""The inference server: a dataplane (models, no HTTP) and a thin REST transport over it. Never imports torch."""
