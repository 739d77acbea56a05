"""Run under torchrun by test_pretrain.py: `trilm pretrain` in each process, then each rank writes the
world size, a checksum of its weights and of its tokenizer, and whether it wrote the output folder."""

import hashlib
import json
import sys
from pathlib import Path

from trilm.recipes import pretrain
from trilm.recipes.common import output

config, report_dir = sys.argv[1], Path(sys.argv[2])
wrote = {"output": False}
save_run = output.save_run


def recording_save_run(trainer, *args, **kwargs):
    wrote["output"] = trainer.is_world_process_zero()
    return save_run(trainer, *args, **kwargs)


pretrain.save_run = recording_save_run
arguments = pretrain.parse_args(pretrain.ARGUMENT_TYPES, ["--config", config], "trilm pretrain", pretrain.launch_defaults())
trainer, _ = pretrain.run(*arguments)
state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
checksum = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for _, t in sorted(state.items()) if not _.endswith("lm_head.weight"))).hexdigest()
tokenizer = hashlib.sha256(trainer.processing_class.backend_tokenizer.to_str().encode()).hexdigest()
report = {"world_size": trainer.args.world_size, "checksum": checksum, "tokenizer": tokenizer, "wrote_output": wrote["output"]}
(report_dir / f"rank{trainer.args.process_index}.json").write_text(json.dumps(report))
