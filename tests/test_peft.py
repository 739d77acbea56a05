"""PEFT LoRA on every family: default targets, all-linear, training, save/reload, merge."""

from dataclasses import dataclass

import pytest
import torch
from peft import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
)

from trilm.modeling import TrilmDecoderForCausalLM, TrilmEncoderForSequenceClassification, TrilmSeq2SeqForConditionalGeneration

from .conftest import tiny_decoder_config, tiny_encoder_config, tiny_seq2seq_config

X = torch.randint(5, 97, (4, 12), generator=torch.Generator().manual_seed(0))


@dataclass
class Case:
    make: callable
    task_type: TaskType
    auto_peft: type
    batch: dict


CASES = {
    "decoder": Case(
        lambda: TrilmDecoderForCausalLM(tiny_decoder_config(tie_word_embeddings=False)),
        TaskType.CAUSAL_LM,
        AutoPeftModelForCausalLM,
        {"input_ids": X, "labels": X},
    ),
    "encoder": Case(
        lambda: TrilmEncoderForSequenceClassification(tiny_encoder_config(num_labels=3)),
        TaskType.SEQ_CLS,
        AutoPeftModelForSequenceClassification,
        {"input_ids": X, "labels": torch.tensor([0, 1, 2, 1])},
    ),
    "seq2seq": Case(
        lambda: TrilmSeq2SeqForConditionalGeneration(tiny_seq2seq_config()),
        TaskType.SEQ_2_SEQ_LM,
        AutoPeftModelForSeq2SeqLM,
        {"input_ids": X, "labels": X[:, :6]},
    ),
}


def base_model(case: Case):
    torch.manual_seed(0)
    return case.make()


def lora_names(model):
    return {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}


def train_steps(model, batch, steps=8):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", CASES)
def test_default_targets_need_no_target_modules(family):
    case = CASES[family]
    model = get_peft_model(base_model(case), LoraConfig(task_type=case.task_type, r=4))
    names = lora_names(model)
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_all_linear_wraps_every_projection_but_not_lm_head():
    case = CASES["decoder"]
    model = get_peft_model(base_model(case), LoraConfig(task_type=case.task_type, r=4, target_modules="all-linear"))
    suffixes = {n.rsplit(".", 1)[-1] for n in lora_names(model)}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n for n in lora_names(model))


@pytest.mark.parametrize(
    ("family", "targets"), [("decoder", None), ("decoder", "all-linear"), ("encoder", None), ("seq2seq", None)]
)
def test_lora_trains_saves_reloads_and_merges(tmp_path, family, targets):
    case = CASES[family]
    model = get_peft_model(base_model(case), LoraConfig(task_type=case.task_type, r=4, lora_alpha=8, target_modules=targets))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = train_steps(model, case.batch)
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    inputs = {k: v for k, v in case.batch.items() if k != "labels" or family == "seq2seq"}
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits

    base_dir = tmp_path / "base"
    base_model(case).save_pretrained(base_dir)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)  # so AutoPeftModel finds the base
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    reloaded = PeftModel.from_pretrained(type(model.base_model.model).from_pretrained(base_dir), tmp_path / "adapter").eval()
    auto = case.auto_peft.from_pretrained(tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    assert type(merged) is type(model.base_model.model)
    with torch.no_grad():
        assert torch.allclose(auto(**inputs).logits, expected, atol=1e-5)
        assert torch.allclose(merged(**inputs).logits, expected, atol=1e-4)
