#!/usr/bin/env bash
# SST-2 (../shared/data/sst2_{train,dev}.tsv): a TF-IDF + logistic-regression baseline (scikit-learn), then a
# trilm encoder pretrained by `trilm pretrain` (masked LM on the SST-2 training sentences, 8k WordPiece
# tokenizer trained on them) and fine-tuned by `trilm finetune`, both on the same split; total CPU time.
# Usage, from the repository root: bash benchmarks/sst2.sh   (needs scikit-learn: pip install scikit-learn)
set -euo pipefail
data=${SHARED_DATA:-../shared/data}
work=${WORK:-runs/sst2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$work"
start=$(date +%s)
python - "$data" <<'PY'
import sys, time
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
t = time.perf_counter()
train = pd.read_csv(f"{sys.argv[1]}/sst2_train.tsv", sep="\t", quoting=3)
dev = pd.read_csv(f"{sys.argv[1]}/sst2_dev.tsv", sep="\t", quoting=3)
vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
classifier = LogisticRegression(C=4.0, max_iter=2000).fit(vectorizer.fit_transform(train.sentence), train.label)
accuracy = (classifier.predict(vectorizer.transform(dev.sentence)) == dev.label).mean()
print(f"TF-IDF (1-2 grams) + logistic regression: dev accuracy {accuracy:.4f} ({time.perf_counter() - t:.0f} s)")
PY
trilm pretrain --config pretrain-encoder-tiny.yaml --train_file "$data/sst2_train.tsv" --text_column_name sentence \
  --tokenizer '{kind: wordpiece, vocab_size: 8000}' --mlm_probability 0.15 \
  --model '{hidden_size: 256, intermediate_size: 512, num_hidden_layers: 4, num_attention_heads: 4, max_position_embeddings: 128, pooling: mean}' \
  --max_steps ${PRETRAIN_STEPS:-3000} --per_device_train_batch_size 32 --learning_rate 0.001 --lr_scheduler_type cosine --warmup_steps 200 \
  --eval_strategy steps --eval_steps 1000 --eval_on_start false --save_strategy no --disable_tqdm true \
  --output_dir "$work/encoder" 2>&1 | grep -E "eval_loss|train_runtime"
echo "pretrained: $(( $(date +%s) - start )) s"
trilm finetune --config finetune-sst2.yaml --train_file "$data/sst2_train.tsv" --validation_file "$data/sst2_dev.tsv" \
  --model_name_or_path "$work/encoder" --disable_tqdm true --output_dir "$work/classifier" 2>&1 | grep -E "eval_accuracy|train_runtime"
python -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"trilm encoder: dev accuracy {m['eval_accuracy']:.4f}, macro-F1 {m['eval_f1']:.4f}\")" "$work/classifier/metrics.json"
echo "total (baseline, pretraining, fine-tuning): $(( $(date +%s) - start )) s"
