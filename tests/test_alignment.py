"""`trilm reward`, `trilm rlhf` and `trilm dpo`: end to end through the CLI on tiny models, outputs reloaded
with the Auto classes, learning on signals a tiny model can pick up, the preference formats, and clear errors
before any training starts."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trilm.recipes import rlhf
from trilm.recipes.common import preferences, rewards
from trilm.recipes.cli import main as trilm
from trilm.recipes.common.models import CONFIGS
from trilm.tokenization import config_values, train_tokenizer

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "max_position_embeddings": 128}
WORDS = "apple river stone cloud green quiet yellow storm candle bright".split()


def pairs(count: int, seed: int = 0) -> list[dict]:
    """Separable preferences: the chosen reply is the word 'yes' repeated, the rejected one 'no'."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        prompt = " ".join(WORDS[j] for j in torch.randint(len(WORDS), (4,), generator=generator).tolist())
        n = 1 + i % 3
        rows.append({"prompt": f"Say something about {prompt}.", "chosen": " ".join(["yes"] * n), "rejected": " ".join(["no"] * n)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> Path:
    """A tiny saved decoder and chat tokenizer, standing in for a `trilm finetune --task sft` run."""
    folder = tmp_path_factory.mktemp("alignment") / "sft"
    texts = [f"{row['prompt']} {row['chosen']} {row['rejected']}" for row in pairs(200)] * 2
    tokenizer = train_tokenizer(texts=texts, kind="bpe", family="decoder", vocab_size=300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["decoder"](**config_values(tokenizer, CONFIGS["decoder"]), **SIZES))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(tmp_path: Path, name: str, **values) -> Path:
    values = {
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "max_steps": 3,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "output_dir": str(tmp_path / name),
        "seed": 0,
        **values,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_a_reward_model_learns_separable_pairs_and_reloads(tmp_path, sft):
    train, held_out = write_jsonl(tmp_path / "train.jsonl", pairs(96)), write_jsonl(tmp_path / "test.jsonl", pairs(32, seed=1))
    config = run_config(tmp_path, "reward", model_name_or_path=str(sft), use_peft=False, train_file=train, validation_file=held_out,
                        max_steps=24, learning_rate=3e-3, logging_steps=5)  # steps 21-24 unlogged: TRL reports them at the end
    assert trilm(["reward", "--config", str(config)]) == 0
    folder = tmp_path / "reward"
    result = metrics(folder)
    assert result["eval_reward_accuracy"] == 1.0 and result["eval_reward_margin"] > 0.5
    assert "train_accuracy" in result and "accuracy" not in result  # TRL's training accuracy, named as such
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(model).__name__ == "TrilmDecoderForSequenceClassification" and model.config.num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chats = [[{"role": "user", "content": "Say something about green storm."}, {"role": "assistant", "content": reply}] for reply in ("yes yes", "no no")]
    chosen, rejected = rewards.score_conversations(model, tokenizer, chats)
    assert chosen > rejected


def test_a_lora_reward_model_reloads_with_auto_peft(tmp_path, sft):
    config = run_config(tmp_path, "reward-lora", model_name_or_path=str(sft), train_file=write_jsonl(tmp_path / "p.jsonl", pairs(40)))
    assert trilm(["reward", "--config", str(config)]) == 0
    folder = tmp_path / "reward-lora"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 1)
    assert "eval_reward_accuracy" in metrics(folder)


def test_hh_rlhf_text_becomes_prompt_and_replies():
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the owl laugh?"
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
    row = preferences.preference_row({"chosen": chosen, "rejected": rejected})
    assert [turn["role"] for turn in row["prompt"]] == ["user", "assistant", "user"]
    assert row["prompt"][-1]["content"] == "Tell me a joke"
    assert row["chosen"] == [{"role": "assistant", "content": "Why did the owl laugh?"}]
    assert row["rejected"] == [{"role": "assistant", "content": "No."}]
    plain = preferences.preference_row({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert plain == {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
                     "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.mark.realdata
def test_reward_reads_hh_rlhf_as_published(tmp_path, sft, shared_data):
    config = run_config(tmp_path, "hh", model_name_or_path=str(sft), train_file=str(shared_data / "hh_rlhf_harmless_base_test.jsonl.gz"),
                        max_train_samples=32, max_eval_samples=16, max_steps=2, max_length=1024)
    assert trilm(["reward", "--config", str(config)]) == 0
    scores = metrics(tmp_path / "hh")
    # The held-out pairs were read as conversations and scored: 15 of the 16 fit in 1024 tokens (accuracy in
    # fifteenths), chosen and rejected scored differently.
    assert scores["eval_reward_accuracy"] * 15 == pytest.approx(round(scores["eval_reward_accuracy"] * 15)) and scores["eval_reward_margin"] != 0


def letter_share(completions, **kwargs) -> list[float]:
    """A reward a tiny model can learn: the share of the letter 'y' in the reply."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [text.count("y") / max(len(text), 1) for text in texts]


def test_number_reward_reads_the_last_number_of_a_reply():
    replies = ["2 + 8 = 10", [{"role": "assistant", "content": "14 minus 6 is 8."}], "To add 8 and 10,", "", "It is 1,000.", "Kalo"]
    assert rewards.number_reward(replies, ["10", "8", "18", "3", "1000", "Rafinport"]) == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    assert rlhf.import_reward("number_reward") is rewards.number_reward


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rlhf_from_a_reward_function_raises_the_reward(tmp_path, sft, algorithm):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in pairs(64)])
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"prompt": row["prompt"]} for row in pairs(16, seed=1)])
    config = run_config(tmp_path, algorithm, model_name_or_path=str(sft), algorithm=algorithm, use_peft=False, train_file=prompts,
                        test_file=held_out, reward_funcs=["tests.test_alignment:letter_share"], max_steps=30, learning_rate=0.02,
                        num_generations=8, per_device_train_batch_size=16, max_completion_length=8, max_new_tokens=8, temperature=1.0,
                        beta=0.01)
    assert trilm(["rlhf", "--config", str(config)]) == 0
    result = metrics(tmp_path / algorithm)
    assert result["train_reward_end"] > result["train_reward_start"] + 0.05
    assert result["eval_reward"] > result["eval_reward_before_training"]  # greedy replies to the held-out prompts too
    rows = [json.loads(line) for line in (tmp_path / algorithm / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sum(row["reward"] for row in rows) / 16 == pytest.approx(result["eval_reward"], abs=1e-6)
    assert result["train_steps_clipped"] > 0 and 0 < result["train_kl_max"] < 10  # clipping acts; the KL is measured and bounded
    AutoModelForCausalLM.from_pretrained(tmp_path / algorithm)


def test_rlhf_from_a_reward_model_folder_with_lora(tmp_path, sft):
    reward = run_config(tmp_path, "rm", model_name_or_path=str(sft), use_peft=False, train_file=write_jsonl(tmp_path / "p.jsonl", pairs(32)))
    assert trilm(["reward", "--config", str(reward)]) == 0
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in pairs(16)])
    config = run_config(tmp_path, "rl-lora", model_name_or_path=str(sft), train_file=prompts, reward_model_name_or_path=[str(tmp_path / "rm")],
                        reward_funcs=["tests.test_alignment:letter_share"], reward_weights=[1.0, 0.5], num_generations=4,
                        max_completion_length=6, max_steps=2)
    trainer, _ = rlhf.run(*rlhf.parse(["--config", str(config)]))
    assert {"rewards/rm/mean", "rewards/letter_share/mean"} <= set(trainer.state.log_history[0])
    folder = tmp_path / "rl-lora"
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    model = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert model.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False).shape == (1, 5)


def test_dpo_prefers_the_chosen_replies_and_reloads(tmp_path, sft):
    config = run_config(tmp_path, "dpo", model_name_or_path=str(sft), train_file=write_jsonl(tmp_path / "train.jsonl", pairs(96)),
                        validation_file=write_jsonl(tmp_path / "test.jsonl", pairs(32, seed=1)), max_steps=12, learning_rate=5e-3)
    assert trilm(["dpo", "--config", str(config)]) == 0
    folder = tmp_path / "dpo"
    assert metrics(folder)["eval_rewards/accuracies"] > 0.9
    model = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert model.peft_config["default"].task_type == "CAUSAL_LM"


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to train fails the test: the errors below must come before training starts."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started"))


def test_bad_alignment_input_is_a_value_error_before_training(tmp_path, sft, no_training):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "hi", "good": "a", "rejected": "b"}] * 4)
    for command in ("reward", "dpo"):
        config = run_config(tmp_path, f"{command}-wrong", model_name_or_path=str(sft), train_file=wrong)
        with pytest.raises(ValueError, match="no chosen column; its columns are prompt, good, rejected"):
            trilm([command, "--config", str(config)])
    # A reward model with another tokenizer than the policy's.
    other = tmp_path / "other"
    tokenizer = train_tokenizer(texts=["completely different words here"] * 20, kind="bpe", family="decoder", vocab_size=280)
    AutoModelForSequenceClassification.from_config(CONFIGS["decoder"](**config_values(tokenizer, CONFIGS["decoder"]), **SIZES, num_labels=1)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = run_config(tmp_path, "mismatch", model_name_or_path=str(sft), reward_model_name_or_path=[str(other)])
    with pytest.raises(ValueError, match="different tokenizer"):
        trilm(["rlhf", "--config", str(config)])
    config = run_config(tmp_path, "no-import", model_name_or_path=str(sft), reward_funcs=["no_such_module:reward"])
    with pytest.raises(ValueError, match="does not import"):
        trilm(["rlhf", "--config", str(config)])
    config = run_config(tmp_path, "no-reference", family="decoder", model=SIZES, tokenizer={"kind": "byte"}, use_peft=False, beta=0.04)
    with pytest.raises(ValueError, match="has none: start from a checkpoint"):
        trilm(["rlhf", "--config", str(config)])
    config = run_config(tmp_path, "odd-saves", model_name_or_path=str(sft), save_strategy="steps", save_steps=3)
    with pytest.raises(ValueError, match="save_steps=3 must be a multiple of num_iterations x steps_per_generation = 2"):
        trilm(["rlhf", "--config", str(config)])
    with pytest.raises(ValueError, match="algorithm='ppo2' does not exist"):
        rlhf.parse(["--algorithm", "ppo2", "--model_name_or_path", str(sft)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"text": "hi"}] * 4)
    config = run_config(tmp_path, "no-prompt", model_name_or_path=str(sft), train_file=prompts, reward_funcs=["answer_reward"])
    with pytest.raises(ValueError, match="has columns text; rlhf reads prompt, question or messages"):
        trilm(["rlhf", "--config", str(config)])


def test_quickstart_full_runs_every_stage_and_reports_them(tmp_path, capsys):
    assert trilm(["quickstart", "--full", "--families", "decoder", "--max_steps", "2", "--max_eval_samples", "8", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [entry["stage"] for entry in report] == ["base", "sft", "rlhf", "ppo", "dpo"]
    # Each stage answered the 8 held-out questions (accuracy in eighths), each answer scored by the reward model.
    assert all(entry["answer_accuracy"] * 8 == pytest.approx(round(entry["answer_accuracy"] * 8)) and math.isfinite(entry["mean_reward"]) for entry in report)
    assert all(entry["kl_to_sft"] >= 0 for entry in report[2:])  # k3 estimates are non-negative
    assert all(entry["seconds_per_update"] > 0 for entry in report[2:4])  # GRPO and PPO side by side
    assert (tmp_path / "stages.png").stat().st_size > 0
    assert "held-out accuracy" in capsys.readouterr().out
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward").config.num_labels == 1
    for stage in ("rlhf", "ppo", "dpo"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / stage)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "ppo" / "value_model").config.num_labels == 1


@pytest.mark.realdata
def test_every_alignment_preset_parses(shared_data, monkeypatch):
    from trilm.recipes import dpo, finetune, reward

    monkeypatch.chdir(Path(rlhf.__file__).parent.parent)  # the HH presets name ../shared/data from the repository root
    base = ["--model_name_or_path", "someone/sft-model"]  # a Hub name: parsing reads no checkpoint
    for module, preset in ((reward, "reward-hh.yaml"), (dpo, "dpo-hh.yaml"), (reward, "quickstart-reward.yaml"), (dpo, "quickstart-dpo.yaml")):
        model_args, data_args, _, training_args = module.parse(["--config", preset, *base])
        assert model_args.model_name_or_path == "someone/sft-model" and training_args.do_train, preset
        assert data_args.train_file is None or Path(data_args.train_file).is_file(), preset
    model_args, _, args, training_args = rlhf.parse(["--config", "rlhf-grpo.yaml", *base])
    assert args.algorithm == "grpo" and training_args.num_iterations == 2 and training_args.beta > 0 and model_args.use_peft
    model_args, _, args, training_args = rlhf.parse(["--config", "rlhf-ppo.yaml", *base])
    assert args.algorithm == "ppo" and training_args.num_ppo_epochs > 1 and training_args.kl_coef > 0 and model_args.use_peft
    _, _, args, training_args = finetune.parse(["--config", "quickstart-sft.yaml", *base])
    assert args.task == "sft" and training_args.assistant_only_loss


@pytest.mark.parametrize("command", ["reward", "dpo", "rlhf"])
def test_a_run_stopped_part_way_resumes_to_the_same_weights(tmp_path, sft, command, monkeypatch):
    from safetensors.torch import load_file
    from transformers import Trainer

    data = {"rlhf": {"train_file": write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in pairs(64)]),
                     "reward_funcs": ["tests.test_alignment:letter_share"], "num_generations": 4, "max_completion_length": 6}}
    # GRPO reuses each generation batch for num_iterations (2) updates: a checkpoint between them could not
    # hold the batch, so checkpoints fall on generation boundaries.
    values = dict(model_name_or_path=str(sft), use_peft=False, max_steps=6, save_strategy="steps", save_steps=2, learning_rate=1e-3,
                  **data.get(command, {"train_file": write_jsonl(tmp_path / "pairs.jsonl", pairs(64))}))
    assert trilm([command, "--config", str(run_config(tmp_path, "whole", **values))]) == 0
    parted = run_config(tmp_path, "parted", **values)
    step, calls = Trainer.training_step, {"n": 0}

    def stop_after_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("stopped part-way")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        trilm([command, "--config", str(parted)])
    monkeypatch.setattr(Trainer, "training_step", step)
    assert trilm([command, "--config", str(parted), "--resume_from_checkpoint", str(tmp_path / "parted" / "checkpoint-4")]) == 0
    expected, actual = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "parted" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_the_model_card_parses_and_describes_the_run(tmp_path, sft):
    from huggingface_hub import ModelCard

    config = run_config(tmp_path, "carded", model_name_or_path=str(sft), train_file=write_jsonl(tmp_path / "p.jsonl", pairs(40)),
                        license="mit")
    assert trilm(["reward", "--config", str(config)]) == 0
    card = ModelCard.load(tmp_path / "carded" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification" and data["license"] == "mit"
    assert {"trilm", "decoder", "reward", "peft", "lora"} <= set(data["tags"]) and data["base_model"] == str(sft)
    scores = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert scores["reward_accuracy"] == pytest.approx(metrics(tmp_path / "carded")["eval_reward_accuracy"], abs=1e-6)
    assert "AutoPeftModelForSequenceClassification" in card.text and "loss.png" in card.text and "learning_rate" in card.text


def test_push_uploads_a_lora_run_with_its_card_in_one_commit(tmp_path, sft, captured_uploads):
    config = run_config(tmp_path, "to-hub", model_name_or_path=str(sft), train_file=write_jsonl(tmp_path / "p.jsonl", pairs(40)),
                        save_strategy="steps", save_steps=2)
    assert trilm(["dpo", "--config", str(config)]) == 0
    assert list((tmp_path / "to-hub").glob("checkpoint-*"))  # checkpoints exist locally and stay behind
    assert trilm(["push", "--output_dir", str(tmp_path / "to-hub"), "--repo_id", "someone/tiny-dpo"]) == 0
    (commit,) = captured_uploads
    assert commit["repo_id"] == "someone/tiny-dpo"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "trilm_args.yaml", "metrics.json"} <= set(commit["files"])
    assert not [f for f in commit["files"] if f.startswith("checkpoint-") or f.endswith((".bin", ".pt"))]
    assert f"base_model: {sft}" in (tmp_path / "to-hub" / "README.md").read_text()


def test_push_to_hub_in_a_recipe_uploads_the_trilm_card(tmp_path, sft, captured_uploads):
    config = run_config(tmp_path, "pushed", model_name_or_path=str(sft), use_peft=False, train_file=write_jsonl(tmp_path / "p.jsonl", pairs(40)),
                        push_to_hub=True, hub_model_id="someone/tiny-reward")
    assert trilm(["reward", "--config", str(config)]) == 0
    assert [c["repo_id"] for c in captured_uploads] == ["someone/tiny-reward"]  # one commit, at the end
    assert {"model.safetensors", "config.json", "README.md"} <= set(captured_uploads[0]["files"])
    assert "trained by `trilm reward`" in (tmp_path / "pushed" / "README.md").read_text()
    with pytest.raises(ValueError, match="holds no model"):
        trilm(["push", "--output_dir", str(tmp_path), "--repo_id", "someone/nothing"])
