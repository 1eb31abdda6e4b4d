"""Model registry. Importing this package registers every architecture module below."""

from training.models import effnet_lite  # noqa: F401  (registers effnet_lite0)
from training.models._registry import create_model, is_model, list_models, register_model
from training.models.base import IQAModel

__all__ = ["IQAModel", "create_model", "is_model", "list_models", "register_model"]
