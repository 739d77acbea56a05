"""Collators of the pretraining objectives transformers does not ship for PyTorch: causal-LM batches of
packed documents (with position ids restarting per document), and T5's span corruption; and
`SeededCollator`, which makes any random collator's batches reproducible across a resume."""

import hashlib
from dataclasses import dataclass

import torch
from transformers import TrainerCallback


class SeededCollator(TrainerCallback):
    """Runs a random collator (masking, span corruption) with torch's generator seeded from (seed, epoch,
    the batch's tokens), in a forked RNG that leaves the global one untouched.

    Trainer's dataloader collates one batch ahead of the step it trains, so the RNG state a checkpoint saves
    has already drawn the next batch's masks; restored on resume, it would mask that batch differently and
    the resumed run would drift from the uninterrupted one. Seeded this way, a batch is masked the same
    whenever it is collated, and differently in every epoch (the callback half keeps the epoch)."""

    def __init__(self, collator, seed: int):
        self.collator, self.seed, self.epoch = collator, seed, 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = int(state.epoch + 1e-6)

    def __call__(self, examples: list[dict]):
        digest = hashlib.blake2b(f"{self.seed}/{self.epoch}".encode(), digest_size=8)
        for example in examples:
            digest.update(torch.as_tensor(example["input_ids"]).numpy().tobytes())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
            return self.collator(examples)


def document_position_ids(input_ids: torch.Tensor, separator_id: int) -> torch.Tensor:
    """Positions counted from the start of each packed document: a document starts after each separator."""
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == separator_id
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - last_start


@dataclass
class CausalLMCollator:
    """Packed blocks of equal length -> `input_ids` and `labels`. With `reset_position_ids`, `position_ids`
    restart at 0 after each separator and no attention mask is passed, so transformers' masking keeps each
    document from attending to the others (as TRL's padding-free batches); the first token of a document
    is not predicted from the previous one."""

    separator_id: int | None
    reset_position_ids: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([example["input_ids"] for example in examples], dtype=torch.long)
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.reset_position_ids and self.separator_id is not None:
            position_ids = document_position_ids(input_ids, self.separator_id)
            batch["position_ids"] = position_ids
            batch["labels"][(position_ids == 0) & (torch.arange(input_ids.shape[1]) > 0)] = -100
        return batch


def span_corruption_lengths(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(tokens to read per example, target length) such that span corruption of that many tokens gives
    exactly `inputs_length` input tokens (T5's `compute_input_and_target_lengths`)."""

    def lengths(tokens_length: int) -> tuple[int, int]:
        noise = int(round(tokens_length * noise_density))
        spans = max(1, int(round(noise / mean_noise_span_length)))
        return tokens_length - noise + spans + 1, noise + spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    targets_length = lengths(tokens_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float) -> torch.Tensor:
    """A boolean mask of `length` with round(length * noise_density) noise tokens in spans of mean length
    `mean_noise_span_length`, alternating with non-noise spans and starting with non-noise (T5's)."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(1, int(round(num_noise / mean_noise_span_length)))

    def segment_lengths(num_items: int) -> torch.Tensor:
        # num_items split into num_spans non-empty segments at random.
        first_in_segment = torch.zeros(num_items, dtype=torch.long)
        first_in_segment[torch.randperm(num_items - 1)[: num_spans - 1] + 1] = 1
        return torch.bincount(first_in_segment.cumsum(0), minlength=num_spans)

    interleaved = torch.stack([segment_lengths(length - num_noise), segment_lengths(num_noise)], dim=1).reshape(-1)
    span_starts = interleaved.cumsum(0)[:-1]
    indicator = torch.zeros(length, dtype=torch.long)
    indicator[span_starts] = 1
    return indicator.cumsum(0) % 2 == 1


@dataclass
class SpanCorruptionCollator:
    """T5-style span corruption of packed blocks: each noise span is replaced in the input by the next
    sentinel (`<extra_id_0>`, `<extra_id_1>`, ...); the target lists each sentinel followed by the tokens it
    replaced; both end with EOS. Blocks of `span_corruption_lengths(...)[0]` tokens give inputs of exactly
    `inputs_length` and targets of exactly the matching target length."""

    sentinel_ids: list[int]
    eos_token_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self):
        if not 0 < self.noise_density < 1:
            raise ValueError(f"noise_density={self.noise_density} must lie in (0, 1).")
        if self.mean_noise_span_length < 1:
            raise ValueError(f"mean_noise_span_length={self.mean_noise_span_length} must be at least 1.")

    def corrupt(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of a batch of blocks (batch, length), each with its own noise mask. Every block
        has the same number of noise tokens and spans, so the rows keep equal lengths."""
        noise = torch.stack([random_spans_noise_mask(tokens.shape[1], self.noise_density, self.mean_noise_span_length) for _ in tokens])
        span_starts = noise & ~torch.nn.functional.pad(noise[:, :-1], (1, 0))
        spans = int(span_starts.sum(dim=1).max())
        if spans > len(self.sentinel_ids):
            raise ValueError(
                f"Span corruption needs {spans} sentinel tokens per example but the tokenizer has {len(self.sentinel_ids)}: "
                "train it with more (num_sentinels) or use shorter blocks."
            )
        # The k-th span of a row gets the k-th sentinel.
        sentinels = torch.tensor(self.sentinel_ids[:spans])[(span_starts.cumsum(dim=1) - 1).clamp(min=0)]
        eos = torch.full((len(tokens), 1), self.eos_token_id)
        # The input: each span replaced by its sentinel.
        inputs = torch.where(span_starts, sentinels, tokens)[~noise | span_starts].view(len(tokens), -1)
        # The target: for each span, its sentinel then its tokens.
        slots = torch.stack([sentinels, tokens], dim=2)[torch.stack([span_starts, noise], dim=2)].view(len(tokens), -1)
        return torch.cat([inputs, eos], dim=1), torch.cat([slots, eos], dim=1)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        inputs, labels = self.corrupt(torch.tensor([example["input_ids"] for example in examples], dtype=torch.long))
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}
