"""`trilm push`: upload a finished run folder to the Hugging Face Hub in one commit.

    trilm push --output_dir runs/quickstart/sft --repo_id you/trilm-tiny-sft [--private true]

The folder goes as the recipe wrote it: the model (or the LoRA adapter, whose card names its base model),
the tokenizer, the model card `README.md`, `trilm_args.yaml`, `metrics.json`, `loss.png`, `merged/` when
there is one; checkpoints stay behind. Recipes push the same way at the end of a run with `push_to_hub: true`
and `hub_model_id` (TrainingArguments' own names). Authentication is huggingface_hub's (`hf auth login`,
or `HF_TOKEN`).
"""

from dataclasses import dataclass, field

from .common.args import parse_args
from .common.output import push_folder


@dataclass
class PushArguments:
    output_dir: str = field(default=None, metadata={"help": "the run folder to upload"})
    repo_id: str = field(default=None, metadata={"help": "the Hub repository, namespace/name"})
    private: bool | None = field(default=None, metadata={"help": "create the repository private"})
    commit_message: str = field(default="trilm run", metadata={"help": "the commit's message"})

    def __post_init__(self):
        if not self.output_dir or not self.repo_id:
            raise ValueError("Give --output_dir (a finished run folder) and --repo_id (namespace/name on the Hub).")


def main(argv: list[str]) -> int:
    (args,) = parse_args((PushArguments,), argv, "trilm push")
    url = push_folder(args.output_dir, args.repo_id, private=args.private, commit_message=args.commit_message)
    print(f"pushed {args.output_dir} to {url}")
    return 0
