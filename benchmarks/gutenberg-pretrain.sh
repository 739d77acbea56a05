#!/usr/bin/env bash
# Encoder masked LM and seq2seq span corruption on the three Gutenberg books of ../shared/data, each with a
# 16k tokenizer trained on the training lines; then the unigram entropy of that tokenizer on the same
# held-out text (the last 10% of lines), which the validation loss is compared with.
# Usage, from the repository root: bash benchmarks/gutenberg-pretrain.sh [encoder|seq2seq ...]
set -euo pipefail
data=${SHARED_DATA:-../shared/data}
work=${WORK:-runs/gutenberg}
mkdir -p "$work"
cat "$data"/gutenberg_pg1342_pride_and_prejudice.txt "$data"/gutenberg_pg84_frankenstein.txt \
    "$data"/gutenberg_pg2701_moby_dick.txt > "$work/books.txt"
common=(--train_file "$work/books.txt" --validation_split_percentage 10 --block_size 128 --bf16 true
        --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --max_eval_samples 100000
        --eval_strategy steps --eval_steps 400 --eval_on_start false --save_strategy no --logging_steps 50
        --learning_rate 0.001 --lr_scheduler_type cosine --warmup_steps 100 --disable_tqdm true)
for family in "${@:-encoder seq2seq}"; do
  case $family in
    encoder) extra=(--config pretrain-encoder-tiny.yaml --tokenizer '{kind: wordpiece, vocab_size: 16000}' --mlm_probability 0.15
                    --model '{hidden_size: 256, intermediate_size: 512, num_hidden_layers: 4, num_attention_heads: 4, max_position_embeddings: 128, sparse_prediction: true}'
                    --max_steps 1600) ;;
    seq2seq) extra=(--config pretrain-seq2seq-tiny.yaml --tokenizer '{kind: bpe, vocab_size: 16000, num_sentinels: 64}'
                    --model '{hidden_size: 256, intermediate_size: 512, encoder_layers: 3, decoder_layers: 3, num_attention_heads: 4, max_position_embeddings: 128, hidden_dropout: 0.15}'
                    --max_steps 2200 --weight_decay 0.1 --adam_beta2 0.999) ;;
  esac
  start=$(date +%s)
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} trilm pretrain "${common[@]}" "${extra[@]}" --output_dir "$work/$family" 2>&1 \
    | grep -E "eval_loss|train_runtime" | sed -E "s/'eval_runtime[^}]*//"
  echo "$family: wall $(( $(date +%s) - start )) s"
  python - "$work/books.txt" "$work/$family" <<'PY'
import json, math, sys
from collections import Counter
import trilm.modeling  # registers trilm's tokenizer class
from transformers import AutoTokenizer
lines = open(sys.argv[1], encoding="utf-8").read().splitlines(keepends=True)
heldout = lines[len(lines) - max(1, len(lines) * 10 // 100):]      # the recipe's validation split
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
counts = Counter(t for ids in tokenizer(heldout, add_special_tokens=False)["input_ids"] for t in ids)
total = sum(counts.values())
entropy = -sum(c / total * math.log(c / total) for c in counts.values())
loss = json.load(open(f"{sys.argv[2]}/metrics.json"))["eval_loss"]
print(f"{sys.argv[2]}: held-out unigram entropy {entropy:.3f} nats/token; eval loss {loss:.3f} "
      f"({100 * (1 - loss / entropy):.1f}% below; target >= 30%)")
PY
done
