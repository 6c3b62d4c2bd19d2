"""Text data: the real Qwen3.5 tokenizer, bundled corpora, compact vocabulary, ArrayRecord token caching, packing
the grain training pipeline and chat prompts from a checkpoint's own template."""

from qwen35_jax.data.captions import CaptionData, CaptionDataConfig, prepare_caption_data
from qwen35_jax.data.chat import load_chat_template, render_chat
from qwen35_jax.data.corpora import BUNDLED_CORPORA, Corpus, check_corpus_spec, load_corpus, split_documents
from qwen35_jax.data.packing import PackedRows, fixed_batches, pack_documents, shuffled_batches
from qwen35_jax.data.pipeline import train_dataset
from qwen35_jax.data.text_dataset import TextData, parse_corpora, prepare_text_data
from qwen35_jax.data.token_cache import tokenize_documents
from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, QwenTokenizer, get_tokenizer
from qwen35_jax.data.vocab import UNK_ID, CompactVocab

__all__ = [
    "BUNDLED_CORPORA", "MODEL_VOCAB_SIZE", "UNK_ID", "CaptionData", "CaptionDataConfig", "CompactVocab", "Corpus",
    "PackedRows", "QwenTokenizer",
    "TextData", "check_corpus_spec", "fixed_batches", "get_tokenizer", "load_corpus", "pack_documents",
    "load_chat_template", "parse_corpora", "prepare_text_data", "render_chat",
    "shuffled_batches", "split_documents", "tokenize_documents", "train_dataset",
    "prepare_caption_data",
]
