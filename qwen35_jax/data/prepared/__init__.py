"""Prepared datasets: corpora tokenised once into flat token shards with a manifest (``writer``, and Apache Beam in
``beam_pipeline`` / ``tools.prepare_data``), read as random-access windows (``dataset``) by a grain stream whose
batches depend only on (datasets, weights, seed, step) (``stream``, ``mixture``).

Names are imported on first use (PEP 562): a Beam worker that only tokenises and writes does not import grain."""

from qwen35_jax.data.lazy_exports import lazy_exports

_EXPORTS = {
    "dataset": ("PreparedDataset", "TokenWindows", "window_row"),
    "documents": ("SplitRule",),
    "manifest": ("Manifest", "read_manifest"),
    "mixture": ("Mixture",),
    "stream": ("StreamSource", "TrainStream"),
    "writer": ("prepare_documents", "shard_counts"),
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
