import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# TorchInductor's cache (flex attention compiles) is not keyed by the CPU capability ATen and oneDNN were capped
# to (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): kernels compiled under one cap and reused under another gave
# wrong results. One cache per capability setting keeps measuring under a cap from breaking later runs.
_cap = "-".join(os.environ.get(name, "") for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")).strip("-")
if _cap:
    import tempfile

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-{_cap.lower()}"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import trilm.modeling  # noqa: E402,F401  (registers the Auto classes)
from trilm.configuration import TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_MODELS = SHARED_DATA.parent / "models"


def pytest_collection_modifyitems(config, items):
    for marker, folder in (("realdata", SHARED_DATA), ("realmodel", SHARED_MODELS)):
        if folder.is_dir():
            continue
        skip = pytest.mark.skip(reason=f"{marker}: {folder} is absent (CI has it)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def transformers_logs():
    """What transformers logs during the test (its loggers do not propagate to pytest's caplog);
    `warning_once` caches are cleared so that a message logged by an earlier test shows again."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger("transformers")
    handler, level = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    hf_logging.warning_once.cache_clear()
    hf_logging.info_once.cache_clear()
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


# Sizes shared by the tiny models of every family: small enough for 2 CPU cores, with GQA.
TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
)


def tiny_decoder_config(**overrides) -> TrilmDecoderConfig:
    return TrilmDecoderConfig(**{**TINY, "num_hidden_layers": 2, "bos_token_id": 1, "eos_token_id": 2, **overrides})


def tiny_encoder_config(**overrides) -> TrilmEncoderConfig:
    return TrilmEncoderConfig(**{**TINY, "num_hidden_layers": 2, "mask_token_id": 4, **overrides})


def tiny_seq2seq_config(**overrides) -> TrilmSeq2SeqConfig:
    values = {**TINY, "encoder_layers": 2, "decoder_layers": 2, "bos_token_id": 1, "eos_token_id": 2}
    return TrilmSeq2SeqConfig(**{**values, "decoder_start_token_id": 0, **overrides})


def assert_checkpointing_keeps_gradients(make_model, batch: dict) -> None:
    """Gradients with activation checkpointing on equal those without it."""
    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "good answer here and there",
    "bad answer there and here",
]


@pytest.fixture(scope="session")
def word_tokenizer():
    return make_word_tokenizer()


def make_word_tokenizer():
    """A tiny word-level tokenizer built locally with `tokenizers` (pad=0, bos=1, eos=2, distinct)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    return make_wordpiece_tokenizer()


def make_wordpiece_tokenizer():
    """A tiny BERT-style tokenizer built locally: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, pair templates."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(vocab_size=97, special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture
def captured_uploads(monkeypatch) -> list[dict]:
    """huggingface_hub's repository creation and commit, captured instead of sent (no network)."""
    from huggingface_hub import HfApi, RepoUrl

    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: commits.append(
        {"repo_id": repo_id, "files": sorted(op.path_in_repo for op in operations), "message": kwargs.get("commit_message")}))
    return commits
