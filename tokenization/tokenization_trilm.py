"""Tokenizers for the three families, trained with the `tokenizers` library and wrapped in transformers'
fast-tokenizer class, so that collators, TRL, `pipeline()` and the Hub take them as they are.

`train_tokenizer(files=..., kind=, vocab_size=, family=)` (or `texts=...`) trains byte-level BPE, WordPiece or
Unigram on text files, or on texts: an iterable of strings or a `datasets.Dataset` column. It returns a `TrilmTokenizer` with the family's
special tokens, post-processor and (decoder) chat template.
"""

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

KINDS = ("bpe", "wordpiece", "unigram")
FAMILIES = ("encoder", "decoder", "seq2seq")
BYTE_ALPHABET_SIZE = 256

# ChatML turns. Assistant replies (and the end-of-turn token that stops generation) sit inside
# {% generation %} so that TRL's assistant_only_loss / return_assistant_tokens_mask find them.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class FamilyTokens:
    """The special tokens of one family, in id order from 0, and the wrapper's named roles."""

    specials: tuple[str, ...]
    roles: dict[str, str]


def family_tokens(family: str, num_sentinels: int = 100) -> FamilyTokens:
    if family == "encoder":
        return FamilyTokens(
            ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
            {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
        )
    if family == "decoder":
        return FamilyTokens(
            ("<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"),
            {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        )
    if family == "seq2seq":
        if num_sentinels < 0:
            raise ValueError(f"num_sentinels={num_sentinels} is invalid: it must be zero or positive.")
        sentinels = tuple(f"<extra_id_{i}>" for i in range(num_sentinels))
        return FamilyTokens(("<pad>", "</s>", "<unk>", *sentinels), {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    raise ValueError(f"family={family!r} is invalid: allowed values are {', '.join(map(repr, FAMILIES))}.")


def encode_corpus(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of many texts at backend speed (no offsets, no Python-side conversion per token), for any
    fast tokenizer; the same ids as `tokenizer(texts)["input_ids"]`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]


class TrilmTokenizer(PreTrainedTokenizerFast):
    """The fast tokenizer every trilm family trains. Adds `encode_corpus`, the bulk path that goes straight
    to the Rust backend for tokenizing a pretraining corpus. It saves as transformers' generic fast tokenizer
    (`TokenizersBackend`, with special tokens, post-processor and chat template as data), so a saved folder
    loads with plain `AutoTokenizer.from_pretrained` in any transformers 5 environment, with no custom code;
    `TrilmTokenizer.from_pretrained(folder)` gives this class back."""

    def encode_corpus(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of many texts at backend speed: no offsets, no Python-side conversion per token."""
        return encode_corpus(self, texts, add_special_tokens)

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        config_path = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "TokenizersBackend"
        config.pop("auto_map", None)  # folders written by earlier trilm versions pointed here at a shim importing trilm
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (Path(save_directory) / "tokenization_trilm.py").unlink(missing_ok=True)
        return files


# --------------------------------------------------------------------------------------------- training
def train_tokenizer(
    files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    texts: Iterable[str] | None = None,
    *,
    kind: str = "bpe",
    vocab_size: int = 32000,
    family: str = "decoder",
    text_column: str = "text",
    min_frequency: int = 2,
    max_chars: int | None = None,
    lowercase: bool = False,
    strip_accents: bool | None = None,
    num_sentinels: int = 100,
    model_max_length: int | None = None,
) -> TrilmTokenizer:
    """Train a tokenizer of `kind` ("bpe" byte-level, "wordpiece", "unigram") for `family` ("encoder",
    "decoder", "seq2seq") on exactly one source: `files` (a path or a list of paths; a missing one is an
    error) or `texts` (an iterable of strings, or a `datasets.Dataset` read from `text_column`). `max_chars` caps how much text is read; `min_frequency`
    applies to BPE and WordPiece merges; `lowercase`/`strip_accents` to WordPiece."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid: allowed values are {', '.join(map(repr, KINDS))}.")
    tokens = family_tokens(family, num_sentinels)
    if kind == "bpe" and vocab_size < BYTE_ALPHABET_SIZE + len(tokens.specials):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs the {BYTE_ALPHABET_SIZE} bytes plus "
            f"{len(tokens.specials)} special tokens, i.e. at least {BYTE_ALPHABET_SIZE + len(tokens.specials)}."
        )
    corpus = _nonempty_texts(read_texts(files, texts, text_column), max_chars)
    backend = _backend(kind, tokens.roles["unk_token"], lowercase, strip_accents)
    backend.train_from_iterator(corpus, _trainer(kind, vocab_size, min_frequency, tokens.specials))
    if backend.get_vocab_size() > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(tokens.specials)} special tokens and the corpus "
            f"alphabet alone take {backend.get_vocab_size()} entries. Raise vocab_size above that."
        )
    return wrap_backend(backend, family, tokens, model_max_length)


def byte_level_tokenizer(family: str = "decoder", num_sentinels: int = 100, model_max_length: int | None = None) -> TrilmTokenizer:
    """Byte-level BPE with no merges: the 256 bytes plus the family's specials, for character-level work."""
    tokens = family_tokens(family, num_sentinels)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(tokens.specials)}
    vocab.update({char: len(tokens.specials) + i for i, char in enumerate(sorted(alphabet))})
    backend = _backend("bpe", tokens.roles["unk_token"], model=models.BPE(vocab=vocab, merges=[]))
    return wrap_backend(backend, family, tokens, model_max_length)


def wrap_backend(backend: Tokenizer, family: str, tokens: FamilyTokens, model_max_length: int | None = None) -> TrilmTokenizer:
    """Add the family's special tokens and post-processor to a trained backend and wrap it."""
    backend.add_special_tokens(list(tokens.specials))
    byte_level = isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)
    template = _template(family, backend)
    backend.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=True), template]) if byte_level else template
    extra = [t for t in tokens.specials if t not in tokens.roles.values()]
    tokenizer = TrilmTokenizer(
        tokenizer_object=backend,
        **tokens.roles,
        extra_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length or int(1e30),
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if family == "encoder" else ["input_ids", "attention_mask"],
    )
    if family == "decoder":
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _template(family: str, backend: Tokenizer) -> processors.TemplateProcessing:
    def ids(*names):
        return [(name, backend.token_to_id(name)) for name in names]

    if family == "encoder":
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=ids("[CLS]", "[SEP]")
        )
    if family == "decoder":
        return processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=ids("<s>"))
    return processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=ids("</s>"))


def _backend(kind: str, unk_token: str, lowercase: bool = False, strip_accents: bool | None = None, model=None) -> Tokenizer:
    if kind == "bpe":
        backend = Tokenizer(model or models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
    elif kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=unk_token))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
    else:
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return backend


def _trainer(kind: str, vocab_size: int, min_frequency: int, specials: tuple[str, ...]):
    if kind == "bpe":
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials), show_progress=False
        )
    unk_token = next(t for t in specials if "unk" in t.lower())
    return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(specials), unk_token=unk_token, show_progress=False)


# ----------------------------------------------------------------------------------------------- sources
def read_texts(files=None, texts=None, text_column: str = "text") -> Iterable[str]:
    """The texts of exactly one source: the lines of `files` (a path or a list of paths, all checked to
    exist before anything is read), or `texts` (an iterable of strings, or a `datasets.Dataset`'s
    `text_column`). Never guesses which a string is."""
    if (files is None) == (texts is None):
        raise ValueError("Give exactly one source: files=[paths] for text files, or texts=[strings] (or a datasets.Dataset).")
    if files is not None:
        paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(p) for p in files]
        if not paths:
            raise ValueError("The corpus is empty: files= holds no paths.")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"Tokenizer source file(s) not found: {', '.join(missing)}.")
        return _file_lines(paths)
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts= takes an iterable of strings, not one string: pass [text], or files=path for a file.")
    if _is_dataset(texts):
        if text_column not in texts.column_names:
            raise ValueError(f"The dataset has no column {text_column!r}; its columns are {texts.column_names}. Pass text_column=.")
        return (text for batch in texts.iter(batch_size=1000) for text in batch[text_column])
    return texts


def _nonempty_texts(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """`texts`, checked to hold some text before training starts."""
    texts = iter(_capped(texts, max_chars))
    for text in texts:
        if text.strip():
            return itertools.chain((text,), texts)
    raise ValueError("The corpus is empty: the source holds no text to train a tokenizer on.")


def _file_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8-sig") as f:
            yield from f


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    if max_chars is None:
        yield from texts
        return
    if max_chars <= 0:
        raise ValueError(f"max_chars={max_chars} is invalid: it must be positive (or None for no limit).")
    remaining = max_chars
    for text in texts:
        yield text[:remaining]
        remaining -= len(text)
        if remaining <= 0:
            return


def _is_dataset(source) -> bool:
    try:
        from datasets import Dataset
    except ImportError:
        return False
    return isinstance(source, Dataset)


# ------------------------------------------------------------------------------------ model agreement
_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id")


def config_values(tokenizer, config_class) -> dict:
    """The `vocab_size` and special token ids a config of `config_class` should take from `tokenizer`:
    `config_class(**config_values(tok, config_class), hidden_size=...)`. Seq2seq models start decoding
    from PAD (as T5 does)."""
    fields = set(config_class.__dataclass_fields__)
    values = {"vocab_size": len(tokenizer)}
    values.update({name: getattr(tokenizer, name) for name in _SPECIAL_IDS if name in fields and getattr(tokenizer, name, None) is not None})
    if "decoder_start_token_id" in fields:
        values["decoder_start_token_id"] = tokenizer.pad_token_id
    return values


def check_tokenizer_matches(tokenizer, config) -> None:
    """Raise a `ValueError` saying what to fix when `tokenizer` and a model `config` disagree: ids beyond the
    embedding, a vocabulary far smaller than the model's (another model's tokenizer: a padded vocabulary may
    leave up to 1%, at least 256, ids unused), no PAD token, or a special token id the config sets that the
    tokenizer has at another id, or not at all (a tokenizer made for another family)."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens (ids up to {len(tokenizer) - 1}) but the model's vocab_size is "
            f"{config.vocab_size}: ids beyond it have no embedding. Build the config with config_values(tokenizer, ...) "
            "or call model.resize_token_embeddings(len(tokenizer))."
        )
    unused = config.vocab_size - len(tokenizer)
    if unused > max(256, config.vocab_size // 100):
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens and the model's vocabulary {config.vocab_size}: it is not the "
            "tokenizer the model was trained with. Use the checkpoint's own tokenizer (leave tokenizer_name_or_path unset)."
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no PAD token: batches cannot be padded. Set tokenizer.pad_token (distinct from EOS).")
    for name in _SPECIAL_IDS:
        ours, theirs = getattr(tokenizer, name, None), getattr(config, name, None)
        if theirs is not None and ours is None:
            raise ValueError(
                f"config.{name}={theirs} but the tokenizer has no {name.removesuffix('_token_id').upper()} token: it was made for "
                "another kind of model. Use the checkpoint's own tokenizer, or one trained for this family."
            )
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(f"config.{name}={theirs} but the tokenizer's is {ours}: set config.{name}={ours}.")