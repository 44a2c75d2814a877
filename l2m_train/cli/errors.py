"""The errors that are the user's to fix: shown as one line, exit code 2, no traceback."""
from l2m_train.config import ConfigError
from l2m_train.data import DataError
from l2m_train.io import OutputError
from l2m_train.train.checkpoint_layout import CheckpointError
from l2m_train.train.lock import RunInUse

UserError = (ConfigError, CheckpointError, DataError, OutputError, RunInUse, FileExistsError, FileNotFoundError)
