"""User-facing errors. The CLI prints them without a traceback and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a file, a key or a value. The message names it."""

    exit_code = 2


class ConfigError(UserError):
    """A config key or value that is unknown or not allowed."""


class DataError(UserError):
    """An annotation file, image or prediction file that cannot be used."""


class CheckpointError(DataError):
    """A checkpoint file that is refused: unreadable, not ours, holding more than tensors
    and plain values, or not matching the model it is loaded into. The message names the
    file (and the key)."""


class BusyError(UserError):
    """A folder another process holds (a second `kfold` on the same retrain). The message
    names the holder."""
