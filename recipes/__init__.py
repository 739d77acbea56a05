"""trilm.recipes: the `trilm` command line and its recipes (thin scripts over Trainer/TRL, configured by YAML)."""
