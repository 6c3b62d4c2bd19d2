"""Prepared datasets: corpora tokenised once into flat token shards with a manifest (``writer``, and Apache Beam in
``beam_pipeline`` / ``tools.prepare_data``), read as random-access windows (``dataset``) by a grain stream whose
batches depend only on (datasets, weights, seed, step) (``stream``, ``mixture``).

Names are imported on first use (PEP 562): a Beam worker that only tokenises and writes does not import grain."""

import importlib
from typing import Any

_EXPORTS = {
    "dataset": ("PreparedDataset", "TokenWindows", "window_row"),
    "documents": ("SplitRule",),
    "manifest": ("Manifest", "read_manifest"),
    "mixture": ("Mixture",),
    "stream": ("StreamSource", "TrainStream"),
    "writer": ("prepare_documents", "shard_counts"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
