"""Model files: the registry of known models, the user's model cache, verified resumable downloads.

A model is named on the command line (``--model NAME``) or given as a path. Names resolve to the bundled demo
model in ``ldfsam/resources`` or to a file in the cache folder (``$LDFSAM_HOME/models``, default
``~/.ldfsam/models``); the install folder is never written to.
"""

from .cache import import_model, installed_models, models_dir, remove_model
from .catalog import ModelInfo, list_models
from .download import download_file
from .registry import ModelEntry, load_registry
from .resolve import DEFAULT_MODEL, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "ModelEntry",
    "ModelInfo",
    "download_file",
    "import_model",
    "installed_models",
    "list_models",
    "load_registry",
    "models_dir",
    "remove_model",
    "resolve_model",
]
