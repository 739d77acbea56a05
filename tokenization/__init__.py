"""trilm.tokenization: training tokenizers with the `tokenizers` library and loading them with AutoTokenizer."""
