"""maasctl: from a YAML recipe to a live, measured Open Inference Protocol endpoint."""

__version__ = "0.1.0"
