"""The shared layer under every recipe: argument parsing (`args`), the process and hardware (`runtime`), the
data layer (`data`, `builtin`, `collators`), model and tokenizer loading (`models`), adapters (`lora`), chat
rendering (`chat`), held-out answers (`answers`), preference and prompt rows (`preferences`), rewards
(`rewards`), trilm's PPO trainer (`ppo`) and the output folder with a run's finish (`output`). A module here
never imports a recipe (`lint-imports` checks it)."""
