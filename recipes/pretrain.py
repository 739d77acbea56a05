"""`trilm pretrain`: each family's pretraining objective on transformers' `Trainer`: masked LM for the
encoder, causal LM on packed documents for the decoder, T5's span corruption for the seq2seq model.

    trilm pretrain --config recipes/configs/pretrain-decoder-tiny.yaml [--key value ...]
    torchrun --nproc_per_node 2 -m trilm.recipes.cli pretrain --config ...   # DDP, CPU or GPU

Parse -> load data -> tokenizer and model -> pack -> train -> write the output folder (`common/output.py`).
"""

import itertools
import time
from dataclasses import dataclass, field

from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from .common.args import launch_defaults, parse_args
from .common.collators import CausalLMCollator, SeededCollator, SpanCorruptionCollator, span_corruption_lengths
from .common.data import DataArguments, load_raw_datasets, pack_texts, require_columns, text_rows
from .common.models import ModelArguments, load_model, load_tokenizer, resolve_family
from .common.output import final_metrics, last_evaluation, record_arguments, save_run, show_progress
from .common.runtime import RunArguments, start_run


@dataclass
class PretrainArguments(RunArguments):
    mlm_probability: float = field(default=0.15, metadata={"help": "encoder: share of tokens masked"})
    whole_word_mask: bool = field(default=False, metadata={"help": "encoder: mask every sub-token of a chosen word"})
    separate_documents: bool = field(
        default=True, metadata={"help": "put EOS (encoder: SEP) after each document; false packs rows back to back, as run_clm"}
    )
    reset_position_ids: bool = field(
        default=False, metadata={"help": "decoder: position ids restart per document, which then do not attend to each other"}
    )
    noise_density: float = field(default=0.15, metadata={"help": "seq2seq: share of tokens corrupted"})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "seq2seq: mean length of a corrupted span"})


def objective(family: str, tokenizer, args: PretrainArguments, block_size: int, seed: int):
    """(collator, tokens read per example, separator between documents) of the family's objective."""
    if family == "encoder":
        if not 0 < args.mlm_probability < 1:
            raise ValueError(f"mlm_probability={args.mlm_probability} must lie in (0, 1).")
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability, whole_word_mask=args.whole_word_mask)
        return SeededCollator(collator, seed), block_size, tokenizer.sep_token_id
    if family == "decoder":
        return CausalLMCollator(tokenizer.eos_token_id, args.reset_position_ids), block_size, tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    names = itertools.takewhile(vocab.__contains__, (f"<extra_id_{i}>" for i in itertools.count()))
    sentinels = [vocab[name] for name in names]
    if not sentinels:
        raise ValueError("Span corruption needs sentinel tokens <extra_id_0>, <extra_id_1>, ... and the tokenizer has none: "
                         "use a seq2seq tokenizer (trilm.tokenization.train_tokenizer(..., family='seq2seq')).")
    collator = SpanCorruptionCollator(sentinels, tokenizer.eos_token_id, args.noise_density, args.mean_noise_span_length)
    read_length, _ = span_corruption_lengths(block_size, args.noise_density, args.mean_noise_span_length)
    return SeededCollator(collator, seed), read_length, tokenizer.eos_token_id


def run(
    model_args: ModelArguments, data_args: DataArguments, args: PretrainArguments, training_args: TrainingArguments
) -> tuple[Trainer, dict]:
    start = start_run(args.tune_cpu_allocator, training_args.seed)
    family = resolve_family(model_args)
    raw = load_raw_datasets(data_args)
    text_column = data_args.text_column_name or "text"
    require_columns(raw["train"], text_column)
    tokenizer = load_tokenizer(model_args, family, texts=text_rows(raw["train"], text_column))
    model = load_model(model_args, family, tokenizer)
    block_size = data_args.block_size or min(model.config.max_position_embeddings, 1024)
    if block_size > model.config.max_position_embeddings and model.config.position_embedding_type == "learned":
        raise ValueError(f"block_size={block_size} exceeds the model's max_position_embeddings={model.config.max_position_embeddings}.")
    collator, read_length, separator = objective(family, tokenizer, args, block_size, training_args.seed)
    separator = separator if args.separate_documents else None
    with training_args.main_process_first(desc="tokenizing and packing"):
        packed = {
            split: pack_texts(raw[split], tokenizer, text_column, read_length, separator, data_args.preprocessing_num_workers, args.whole_word_mask)
            for split in ("train", "validation")
            if split in raw
        }
    if hasattr(packed["train"], "__len__") and len(packed["train"]) == 0:
        raise ValueError(f"The training text holds fewer than block_size={read_length} tokens: lower block_size or add text.")
    arguments = (model_args, data_args, args, training_args)
    record_arguments(arguments)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=packed["train"],
        eval_dataset=packed.get("validation"),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[collator] if isinstance(collator, TrainerCallback) else None,
    )
    show_progress(trainer, f"pretrain {family}")
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    eval_metrics = last_evaluation(trainer) if "validation" in packed else {}
    metrics = final_metrics(train_output, eval_metrics, read_length)
    metrics["wall_time"] = time.perf_counter() - start
    save_run(trainer, tokenizer, "pretrain", arguments, metrics, data_args.description())
    return trainer, metrics


ARGUMENT_TYPES = (ModelArguments, DataArguments, PretrainArguments, TrainingArguments)


def parse(argv: list[str]) -> tuple:
    # remove_unused_columns false: the collators read exactly the packed columns.
    defaults = {**launch_defaults(), "remove_unused_columns": False, "output_dir": "runs/pretrain"}
    return parse_args(ARGUMENT_TYPES, argv, "trilm pretrain", defaults)


def main(argv: list[str]) -> int:
    run(*parse(argv))
    return 0
