"""ntng: No Train No Gain, re-evaluated.

Efficient-training methods for BERT and T5 under a fixed Reference System Time (RST) budget. Everything the CLI
does is a plain function here first; heavy modules (torch, datasets) load on first use so `ntng --help` is quick.
"""

import warnings
from importlib import import_module

from .errors import NtngError, RunError, UsageError
from .presets import MODELS, PRESETS, get_preset, parse_budget

__version__ = "0.1.0"

# Libraries we load (datasets, huggingface_hub) import tqdm.auto, which warns on stderr in a Jupyter kernel without
# ipywidgets; executed grid notebooks would carry that warning into the book. ntng's own bars are off there.
warnings.filterwarnings("ignore", message="IProgress not found")

# name -> module that defines it (a wing's module); imported on first access. The wings themselves (ntng.data,
# ntng.models, ntng.training, ntng.methods, ntng.experiments, ntng.book) are subpackages.
_LAZY = {
    "build_data": "data.corpus", "load_packed": "data.corpus", "load_task": "data.corpus",
    "load_tokenizer": "data.corpus", "build_model": "models.pretraining", "pretrain": "training.loop",
    "calibrate": "training.calibration", "read_metrics": "training.records", "build_book": "book.build",
    "load_runs": "book.report", "sweep": "experiments.grid", "compare": "book.comparison",
    "finetune": "experiments.downstream", "publish_site": "book.publish",
}
WINGS = ("data", "models", "training", "methods", "experiments", "book")


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name in WINGS:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ntng' has no attribute {name!r}")


__all__ = ["NtngError", "RunError", "UsageError", "MODELS", "PRESETS", "get_preset", "parse_budget",
           "build_data", "load_packed", "load_task", "load_tokenizer", "build_model", "pretrain", "calibrate",
           "read_metrics", "sweep", "finetune", "compare"]
