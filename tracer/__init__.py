"""clt-tracer: attribution graphs for transformer language models."""
