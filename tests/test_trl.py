"""TRL takes the decoder as it is: the classification head as a reward model, the LM in padding-free SFT."""

import pytest
import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from trilm.modeling import TrilmDecoderForCausalLM, TrilmDecoderForSequenceClassification

from .conftest import CORPUS, tiny_decoder_config

COMMON = dict(report_to=[], save_strategy="no", logging_steps=5, use_cpu=True, disable_tqdm=True)


def config_for(tokenizer, **overrides):
    return tiny_decoder_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


def test_reward_trainer_learns_to_prefer_chosen(word_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = TrilmDecoderForSequenceClassification(config_for(word_tokenizer, num_labels=1))
    data = Dataset.from_dict({"chosen": ["good answer here the cat"] * 16, "rejected": ["bad answer there a dog"] * 16})
    args = RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=10, learning_rate=1e-3, **COMMON)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=word_tokenizer)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "accuracy" in entry]
    assert logs[-1]["accuracy"] == 1.0 and logs[-1]["loss"] < logs[0]["loss"]
    chosen, rejected = (word_tokenizer(t, return_tensors="pt") for t in ("good answer here the cat", "bad answer there a dog"))
    model.eval()
    with torch.no_grad():
        assert model(**chosen).logits.item() > model(**rejected).logits.item()


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_sft_trainer_trains_the_causal_lm(word_tokenizer, tmp_path, padding_free):
    torch.manual_seed(0)
    model = TrilmDecoderForCausalLM(config_for(word_tokenizer))
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=10,
        learning_rate=1e-2,
        max_length=64,
        padding_free=padding_free,
        packing=padding_free,
        **COMMON,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": CORPUS * 5}), processing_class=word_tokenizer)
    if padding_free:
        batch = next(iter(trainer.get_train_dataloader()))
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
