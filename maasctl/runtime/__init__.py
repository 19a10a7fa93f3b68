"""The model runtime: onnxruntime sessions for repository models. numpy + onnxruntime only, never torch."""

from maasctl.runtime.session import LoadedModel, load_model, select_providers

__all__ = ["LoadedModel", "load_model", "select_providers"]
