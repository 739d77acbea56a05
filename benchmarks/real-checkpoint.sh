#!/usr/bin/env bash
# SmolLM2-135M-Instruct (../shared/models, a GGUF file) through the four real-* presets, each run alone, and LoRA
# SFT throughput through `trilm finetune` against TRL's own SFTTrainer on the same model as a transformers Llama
# folder (no trilm), same data and settings. Prints each run's time and headline figures (metrics.json).
# Usage, from the repository root: bash benchmarks/real-checkpoint.sh [sft reward dpo grpo throughput]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
stages=${*:-sft reward dpo grpo throughput}
mkdir -p runs/real
python -c "import torch; print('cpu capability:', torch.backends.cpu.get_cpu_capability(), '| threads:', torch.get_num_threads())"

# The built-in corpus's arithmetic questions: GRPO's prompts (train) and held-out questions (test).
python - <<'PY'
import json, re
from trilm.recipes.corpus import build_corpus
corpus = build_corpus(0)
arithmetic = lambda rows: [row for row in rows if re.match(r"What is \d+ (plus|minus|times) \d+\?$", row["question"])]
for split, rows in (("train", corpus["prompts"]["train"]), ("test", corpus["qa"]["test"])):
    with open(f"runs/real/arithmetic_{split}.jsonl", "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in arithmetic(rows))
PY

run() {  # name, command...
  local name=$1; shift
  local start=$(date +%s)
  "$@" 2>&1 | grep -E "^trilm|through|eval_|train_loss" | grep -v "it/s" || true
  echo "== $name: $(( $(date +%s) - start )) s"
}
for stage in $stages; do
  case $stage in
    sft) run real-sft trilm finetune --config real-sft.yaml ;;
    reward) run real-reward-hh trilm reward --config real-reward-hh.yaml ;;
    dpo) run real-dpo-hh trilm dpo --config real-dpo-hh.yaml ;;
    grpo) run real-grpo trilm rlhf --config real-grpo.yaml ;;
    throughput)
      # The same LoRA SFT, 20 steps each in float32, side by side: trilm on the GGUF file, TRL on a Llama folder of it.
      python - <<'PY'
import json, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
folder, name = "../shared/models", "SmolLM2-135M-Instruct.Q4_1.gguf"
gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
llama = LlamaForCausalLM(gguf.config.__class__(**{k: v for k, v in gguf.config.to_dict().items() if k != "quantization_config"}))
llama.load_state_dict(gguf.state_dict())
llama.save_pretrained("runs/real/llama")
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained("runs/real/llama")
PY
      common=(--max_steps 20 --eval_strategy no --eval_on_start false --bf16 false --output_dir runs/real/throughput-trilm)
      run throughput-trilm trilm finetune --config real-sft.yaml "${common[@]}"
      python - <<'PY'
import json, time
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer
import yaml
preset = yaml.safe_load(open("recipes/configs/real-sft.yaml"))
rows = load_dataset("json", data_files="../shared/data/code_alpaca_2k.json")["train"]
rows = rows.map(lambda r: {"prompt": [{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")}],
                           "completion": [{"role": "assistant", "content": r["output"]}]}, remove_columns=rows.column_names)
rows = rows.select(range(int(len(rows) * 0.95)))
args = SFTConfig(output_dir="runs/real/throughput-trl", max_steps=20, per_device_train_batch_size=preset["per_device_train_batch_size"],
                 learning_rate=preset["learning_rate"], max_length=preset["max_length"], bf16=False, use_cpu=True,
                 save_strategy="no", report_to="none", logging_steps=10, lr_scheduler_type="cosine", warmup_steps=0.05)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=preset["lora_target_modules"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model="runs/real/llama", args=args, train_dataset=rows, processing_class=AutoTokenizer.from_pretrained("runs/real/llama"), peft_config=peft)
metrics = trainer.train().metrics
print(f"== throughput-trl: {metrics['train_samples_per_second']:.3f} samples/s, {metrics['train_runtime']:.0f} s")
PY
      python -c "import json; m = json.load(open('runs/real/throughput-trilm/metrics.json')); print(f\"== throughput-trilm: {m['train_samples_per_second']:.3f} samples/s, {m['train_runtime']:.0f} s, {m['precision']}\")" ;;
  esac
done
