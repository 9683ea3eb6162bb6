"""Base models: resolve a model reference, load its tokenizer and weights, safely.

References: the built-in alias, a local safetensors folder, a `.gguf` file, a hub id, or a run
directory (its adapter on its base, or its full weights). Nothing here knows about training.
"""

from tunery.models.builtin import BUILTIN_MODELS, builtin_model_dir, list_models
from tunery.models.load import load_model, load_tokenizer, select_dtype, weights_sha256
from tunery.models.resolve import ResolvedModel, resolve_model

__all__ = [
    "BUILTIN_MODELS",
    "ResolvedModel",
    "builtin_model_dir",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "select_dtype",
    "weights_sha256",
]
