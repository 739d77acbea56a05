#!/usr/bin/env bash
# Multi30k English -> German from scratch (`translate-multi30k.yaml`: a new encoder-decoder and an 8k unigram
# tokenizer trained on both sides of the training pairs), then sacreBLEU on multi30k_val (beam search).
# Usage, from the repository root: bash benchmarks/multi30k.sh [--key value ...]   (flags override the preset)
set -euo pipefail
data=${SHARED_DATA:-../shared/data}
work=${WORK:-runs/multi30k}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
trilm finetune --config translate-multi30k.yaml \
  --train_file "$data/multi30k_train.en.gz" --train_target_file "$data/multi30k_train.de.gz" \
  --validation_file "$data/multi30k_val.en.gz" --validation_target_file "$data/multi30k_val.de.gz" \
  --disable_tqdm true --output_dir "$work" "$@" 2>&1 | grep -E "'loss'|train_runtime|eval_bleu" | awk 'NR % 5 == 1 || /runtime|bleu/'
python -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"BLEU {m['eval_bleu']:.2f}, ROUGE-L {m['eval_rougeL']:.2f}; training {m['train_runtime']:.0f} s, evaluation {m['eval_runtime']:.0f} s\")" "$work/metrics.json"
echo "wall: $(( $(date +%s) - start )) s"
