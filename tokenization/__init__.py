"""trilm.tokenization: training tokenizers with the `tokenizers` library and loading them with AutoTokenizer.

Importing this package registers `TrilmTokenizer` with AutoTokenizer for every trilm model type.
"""

from transformers import AutoTokenizer

from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig

from .tokenization_trilm import (
    CHAT_TEMPLATE,
    FAMILIES,
    KINDS,
    TrilmTokenizer,
    byte_level_tokenizer,
    check_tokenizer_matches,
    config_values,
    encode_corpus,
    family_tokens,
    read_texts,
    train_tokenizer,
    wrap_backend,
)

for _config_class in (TrilmEncoderConfig, TrilmDecoderConfig, TrilmSeq2SeqConfig):
    AutoTokenizer.register(_config_class, tokenizer_class=TrilmTokenizer, exist_ok=True)

__all__ = [
    "CHAT_TEMPLATE",
    "FAMILIES",
    "KINDS",
    "TrilmTokenizer",
    "byte_level_tokenizer",
    "check_tokenizer_matches",
    "config_values",
    "encode_corpus",
    "family_tokens",
    "read_texts",
    "train_tokenizer",
    "wrap_backend",
]
