"""Build the bundled default model: offline corpus, planted tasks, tokenizer, training, evaluation.

Rebuild everything with `python -m tracer.bundle build` (see `tracer/bundle/__main__.py` for the steps).
"""
