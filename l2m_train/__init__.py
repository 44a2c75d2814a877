"""l2m_train: training Large Memory Models (LM2)."""
__version__ = "0.1.0"
