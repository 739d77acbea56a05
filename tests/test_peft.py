"""PEFT LoRA on the decoder: default targets, all-linear, training, save/reload, merge."""

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, TaskType, get_peft_model

from trilm.modeling import TrilmDecoderForCausalLM

from .conftest import tiny_decoder_config

X = torch.randint(3, 97, (4, 12), generator=torch.Generator().manual_seed(0))


def base_model():
    torch.manual_seed(0)
    return TrilmDecoderForCausalLM(tiny_decoder_config(tie_word_embeddings=False))


def lora_names(model):
    return {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")}


def train_steps(model, steps=8):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=X, labels=X).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_default_targets_need_no_target_modules():
    model = get_peft_model(base_model(), LoraConfig(task_type=TaskType.CAUSAL_LM, r=4))
    names = lora_names(model)
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert len(names) == 2 * 2  # q and v in each of the two layers


def test_all_linear_wraps_every_projection_but_not_lm_head():
    model = get_peft_model(base_model(), LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear"))
    suffixes = {n.rsplit(".", 1)[-1] for n in lora_names(model)}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n for n in lora_names(model))


@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_lora_trains_saves_reloads_and_merges(tmp_path, targets):
    model = get_peft_model(base_model(), LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules=targets))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=X).logits

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base_dir = tmp_path / "base"
    base_model().save_pretrained(base_dir)
    # The adapter config names the base checkpoint so AutoPeftModel can find it.
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(TrilmDecoderForCausalLM.from_pretrained(base_dir), tmp_path / "adapter").eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload()
    assert type(merged) is TrilmDecoderForCausalLM
    with torch.no_grad():
        assert torch.allclose(auto(input_ids=X).logits, expected, atol=1e-5)
        assert torch.allclose(merged(input_ids=X).logits, expected, atol=1e-4)
