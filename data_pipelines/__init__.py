"""Data pipelines: sources → artifacts (tokenizers, packed shards, bAbI stories, BABILong-style samples). `l2m data …`."""
