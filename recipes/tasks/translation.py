"""Translation and summarization on `Seq2SeqTrainer` with `predict_with_generate`: sacreBLEU and ROUGE.

Data as run_translation's JSON lines (`{"translation": {"en": ..., "de": ...}}` with `source_lang` /
`target_lang`), as two columns, or as two line-aligned text files (`train_file` + `train_target_file`,
as Multi30k ships them)."""

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

from ..common.data import DataArguments, column_names, finish_splits, load_raw_datasets, read_lines, require_columns
from . import Features, Task


def aligned_files(sources: str, targets: str, split: str) -> list[dict]:
    source_lines, target_lines = read_lines(sources), read_lines(targets)
    if len(source_lines) != len(target_lines):
        raise ValueError(f"{split}: {sources} has {len(source_lines)} lines and {targets} {len(target_lines)}; line-aligned files must match.")
    return [{"source": s, "target": t} for s, t in zip(source_lines, target_lines)]


def load_data(data_args: DataArguments, args):
    if not data_args.train_target_file:
        return load_raw_datasets(data_args, "translation")
    splits = {"train": aligned_files(data_args.train_file, data_args.train_target_file, "train")}
    if data_args.validation_file:
        splits["validation"] = aligned_files(data_args.validation_file, data_args.validation_target_file, "validation")
    return finish_splits(DatasetDict({split: Dataset.from_list(rows) for split, rows in splits.items()}), data_args)


def pair_reader(dataset, args):
    """A function giving (source, target) of a row, for any of the three layouts."""
    if "translation" in column_names(dataset):
        if not (args.source_lang and args.target_lang):
            raise ValueError("Rows of {'translation': {...}} need source_lang and target_lang (e.g. en and de).")
        languages = set(dataset[0]["translation"])
        missing = [lang for lang in (args.source_lang, args.target_lang) if lang not in languages]
        if missing:
            raise ValueError(f"The translations have no language {', '.join(missing)}; they have {', '.join(sorted(languages))}.")
        return lambda row: (row["translation"][args.source_lang], row["translation"][args.target_lang])
    source = args.source_column_name or args.source_lang or "source"
    target = args.target_column_name or args.target_lang or "target"
    require_columns(dataset, source, target, option="source_column_name / target_column_name")
    return lambda row: (row[source], row[target])


def text_pairs(rows, args, split: str) -> tuple[list[str], list[str]]:
    read = pair_reader(rows, args)
    sources, targets = [], []
    for index, row in enumerate(rows):
        source, target = read(row)
        if not target or not target.strip():
            raise ValueError(f"{split} row {index} has an empty target (source: {source!r}); remove the row or fill it in.")
        sources.append(args.source_prefix + source)
        targets.append(target)
    return sources, targets


def generation_metrics(tokenizer):
    def compute(output) -> dict:
        import sacrebleu
        from rouge_score import rouge_scorer

        predictions = decode(tokenizer, output.predictions)
        references = decode(tokenizer, output.label_ids)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        rouge = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        scores = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score}
        scores |= {name: 100 * float(np.mean([r[name].fmeasure for r in rouge])) for name in ("rouge1", "rouge2", "rougeL")}
        scores["gen_len"] = float(np.mean([np.count_nonzero((row != tokenizer.pad_token_id) & (row != -100)) for row in output.predictions]))
        return scores

    return compute


def decode(tokenizer, ids) -> list[str]:
    ids = np.where(ids != -100, ids, tokenizer.pad_token_id)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def prepare(raw, tokenizer, data_args, args, training_args, max_length: int, class_names=None) -> Features:
    max_target_length = args.max_target_length or max_length
    pairs = {split: text_pairs(raw[split], args, split) for split in ("train", "validation") if split in raw}

    def encode(split):
        sources, targets = pairs[split]
        encoded = tokenizer(sources, text_target=targets, truncation=True, max_length=max_length)
        if max_target_length != max_length:
            encoded["labels"] = tokenizer(text_target=targets, truncation=True, max_length=max_target_length)["input_ids"]
        encoded.pop("token_type_ids", None)
        return Dataset.from_dict(dict(encoded))

    encoded = {split: encode(split) for split in pairs}

    def predictions(output):
        sources, targets = pairs["validation"]
        return [{"source": s, "reference": t, "prediction": p} for s, t, p in zip(sources, targets, decode(tokenizer, output.predictions))]

    return Features(
        train=encoded.get("train"),
        eval=encoded.get("validation"),
        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        compute_metrics=generation_metrics(tokenizer) if training_args.predict_with_generate else None,
        predictions=predictions if training_args.predict_with_generate else (lambda output: []),
    )


def texts(raw, data_args, args):
    sources, targets = text_pairs(raw["train"], args, "train")
    return sources + targets


TASK = Task(
    families=("seq2seq",),
    auto_class=AutoModelForSeq2SeqLM,
    peft_task_type="SEQ_2_SEQ_LM",
    load_data=load_data,
    texts=texts,
    prepare=prepare,
)
