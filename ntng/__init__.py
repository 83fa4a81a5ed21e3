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

# name -> module that defines it; imported on first access
_LAZY = {
    "build_data": "data", "load_packed": "data", "load_task": "data", "load_tokenizer": "data",
    "build_model": "models", "pretrain": "train", "calibrate": "calibration", "read_metrics": "records",
    "build_book": "book", "load_runs": "report",
    "sweep": "grid", "compare": "comparison",
    "finetune": "downstream",
    "data": "data", "models": "models", "collate": "collate", "sources": "sources", "vocab": "vocab",
}


def __getattr__(name):
    if name in _LAZY:
        module = import_module(f".{_LAZY[name]}", __name__)
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module 'ntng' has no attribute {name!r}")


__all__ = ["NtngError", "RunError", "UsageError", "MODELS", "PRESETS", "get_preset", "parse_budget",
           "build_data", "load_packed", "load_task", "load_tokenizer", "build_model", "pretrain", "calibrate",
           "read_metrics", "sweep", "finetune", "compare"]
