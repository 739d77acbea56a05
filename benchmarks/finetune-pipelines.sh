#!/usr/bin/env bash
# The fine-tuning pipelines on real data, each from a trilm encoder and from a BERT folder converted through
# interop (no target: they prove the pipelines), and instruction tuning on the built-in corpus and Code Alpaca.
#   1. a BERT-architecture trilm encoder pretrained by `trilm pretrain` on the three Gutenberg books, also
#      saved as a transformers BertForMaskedLM folder (`to_transformers`);
#   2. NER on UNER English-PUD (.iob2, last 20% held out) and QA on the SQuAD v2 file (last 20% held out),
#      LoRA, from each of the two folders;
#   3. a tiny decoder pretrained on the built-in corpus (1,500 steps, as quickstart --full), instruction-tuned on its
#      demonstrations with quickstart --full's preset (held-out answer accuracy before and after), then on
#      code_alpaca_2k.json with the same recipe.
# Usage, from the repository root: bash benchmarks/finetune-pipelines.sh
set -euo pipefail
data=${SHARED_DATA:-../shared/data}
work=${WORK:-runs/pipelines}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$work"
quiet=(--disable_tqdm true --report_to none)
cat "$data"/gutenberg_pg1342_pride_and_prejudice.txt "$data"/gutenberg_pg84_frankenstein.txt \
    "$data"/gutenberg_pg2701_moby_dick.txt > "$work/books.txt"
bert='{hidden_size: 256, intermediate_size: 1024, num_hidden_layers: 4, num_attention_heads: 4, max_position_embeddings: 512,
       type_vocab_size: 2, norm_type: layernorm, norm_bias: true, norm_eps: 1.0e-12, norm_position: post,
       position_embedding_type: learned, mlp_type: plain, hidden_act: gelu, attention_bias: true, mlp_bias: true, embedding_norm: true}'
trilm pretrain --config pretrain-encoder-tiny.yaml --train_file "$work/books.txt" --model "$bert" \
  --tokenizer '{kind: wordpiece, vocab_size: 16000}' --mlm_probability 0.15 --block_size 128 --max_steps 1500 \
  --per_device_train_batch_size 32 --learning_rate 0.0005 --lr_scheduler_type cosine --warmup_steps 150 --eval_strategy "no" --eval_on_start false \
  --save_strategy no "${quiet[@]}" --output_dir "$work/encoder" 2>&1 | grep -E "train_runtime"
python - "$work" <<'PY'
import sys
from transformers import AutoModelForMaskedLM, AutoTokenizer
from trilm.modeling.interop import to_transformers
work = sys.argv[1]
to_transformers(AutoModelForMaskedLM.from_pretrained(f"{work}/encoder")).save_pretrained(f"{work}/bert")
AutoTokenizer.from_pretrained(f"{work}/encoder").save_pretrained(f"{work}/bert")
print("saved", f"{work}/bert", "as BertForMaskedLM")
PY
report() { python -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1], {k: round(v, 4) for k, v in m.items() if k.startswith('eval_') and 'runtime' not in k and 'per_second' not in k}, 'train', round(m.get('train_runtime', 0)), 's')" "$1/metrics.json"; }
for start in encoder bert; do
  trilm finetune --config finetune-ner.yaml --train_file "$data/uner_en_pud-ud-test.iob2" --model_name_or_path "$work/$start" \
    "${quiet[@]}" --output_dir "$work/ner-$start" > "$work/ner-$start.log" 2>&1
  report "$work/ner-$start"
  trilm finetune --config finetune-squad.yaml --train_file "$data/squad_v2.0_dev_first4articles.json" --model_name_or_path "$work/$start" \
    "${quiet[@]}" --output_dir "$work/squad-$start" > "$work/squad-$start.log" 2>&1
  report "$work/squad-$start"
done
trilm pretrain --config pretrain-decoder-tiny.yaml --max_steps 1500 --learning_rate 0.003 --lr_scheduler_type cosine \
  --eval_on_start false --save_strategy no "${quiet[@]}" \
  --output_dir "$work/decoder" 2>&1 | grep -E "train_runtime"
trilm finetune --config quickstart-sft.yaml --model_name_or_path "$work/decoder" "${quiet[@]}" --output_dir "$work/sft-corpus" \
  > "$work/sft-corpus.log" 2>&1
report "$work/sft-corpus"
trilm finetune --config sft-alpaca.yaml --train_file "$data/code_alpaca_2k.json" --model_name_or_path "$work/decoder" \
  --max_length 128 --num_train_epochs 1 "${quiet[@]}" --output_dir "$work/sft-alpaca" > "$work/sft-alpaca.log" 2>&1
report "$work/sft-alpaca"
