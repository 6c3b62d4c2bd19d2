"""Text data: the real Qwen3.5 tokenizer, bundled corpora, prepared datasets and their grain stream
(``data.prepared``), compact vocabulary, packing, and chat prompts from a checkpoint's own template.

The names below are imported on first use (PEP 562), so a process that needs only the input pipeline
(``qwen35_jax.data.prepared``, e.g. a grain worker) does not import jax, the image code or the tokenizer.
"""

import importlib
from typing import Any

_EXPORTS = {
    "captions": ("CaptionData", "CaptionDataConfig", "prepare_caption_data"),
    "chat": ("load_chat_template", "render_chat"),
    "corpora": ("BUNDLED_CORPORA", "Corpus", "check_corpus_spec", "load_corpus"),
    "packing": ("PackedRows", "fixed_batches", "pack_documents"),
    "text_dataset": ("TextData", "parse_corpora", "prepare_text_data"),
    "tokenizer": ("MODEL_VOCAB_SIZE", "QwenTokenizer", "get_tokenizer"),
    "vocab": ("UNK_ID", "CompactVocab"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
