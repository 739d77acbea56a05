"""Run under torchrun (2 CPU ranks, gloo) by test_model_fixes.py: load a saved seq2seq LM with tensor parallelism
(`DistributedConfig(tp_size=2)`) and write, from rank 0, the largest difference of its logits from the unsharded
ones saved beside the model (`expected.safetensors`)."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM
from transformers.distributed import DistributedConfig

import trilm.modeling  # noqa: F401  (registers the Auto classes)

folder = Path(sys.argv[1])
model = AutoModelForSeq2SeqLM.from_pretrained(folder, distributed_config=DistributedConfig(tp_size=2)).eval()
inputs = load_file(folder / "inputs.safetensors")
with torch.no_grad():
    logits = model(**inputs).logits
if torch.distributed.get_rank() == 0:
    expected = load_file(folder / "expected.safetensors")["logits"]
    report = {"max_diff": (logits - expected).abs().max().item(), "sharded": sorted(model.tp_plan)}
    (folder / "tp.json").write_text(json.dumps(report))
