"""The model registry (timm-style): `create_model("name", ...)`, `list_models()`.

Importing this package registers the built-in families; it imports torch.
"""

from maasctl.models import cnn, hf, mlp, sequence, vision  # noqa: F401  (registers the built-in models)
from maasctl.models.registry import build_model_from_meta, create_model, list_models, register_model

__all__ = ["build_model_from_meta", "create_model", "list_models", "register_model"]
