"""Evaluation of trained models: BABILong accuracy by task and context length, perplexity by segment index."""
