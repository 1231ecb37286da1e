"""One module per task: a pure `preprocess` / `postprocess` pair and one async entry point."""
