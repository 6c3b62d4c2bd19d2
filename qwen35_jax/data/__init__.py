"""Text data: the real Qwen3.5 tokenizer, bundled corpora, prepared datasets and their grain stream
(``data.prepared``), compact vocabulary, packing, and chat prompts from a checkpoint's own template.

The names below are imported on first use (PEP 562), so a process that needs only the input pipeline
(``qwen35_jax.data.prepared``, e.g. a grain worker) does not import jax, the image code or the tokenizer.
"""

from qwen35_jax.data.lazy_exports import lazy_exports

_EXPORTS = {
    "captions": ("CaptionData", "CaptionDataConfig", "prepare_caption_data"),
    "chat": ("load_chat_template", "render_chat"),
    "corpora": ("BUNDLED_CORPORA", "Corpus", "check_corpus_spec", "load_corpus"),
    "packing": ("PackedRows", "fixed_batches", "pack_documents"),
    "text_dataset": ("TextData", "parse_corpora", "prepare_text_data"),
    "tokenizer": ("MODEL_VOCAB_SIZE", "QwenTokenizer", "get_tokenizer"),
    "vocab": ("UNK_ID", "CompactVocab"),
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
