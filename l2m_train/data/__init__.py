"""Datasets and tokenizers. Every dataset marks positions that carry no loss with IGNORE."""

IGNORE = -100  # the label of a position without loss (torch's cross-entropy ignore_index)


class DataError(ValueError):
    """Missing, malformed or mismatched data, described in one line that names the file or the difference."""
