"""Datasets and tokenizers. Every dataset marks positions that carry no loss with IGNORE."""
import hashlib
import json

IGNORE = -100  # the label of a position without loss (torch's cross-entropy ignore_index)


class DataError(ValueError):
    """Missing, malformed or mismatched data, described in one line that names the file or the difference."""


def json_fingerprint(value) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys): equal content, equal fingerprint."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
