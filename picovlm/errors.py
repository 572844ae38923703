"""One exception type for mistakes a user can fix: the CLI prints its message, never a traceback."""


class PicovlmError(Exception):
    """A user-facing error. The message names the file, row or field at fault and what to do about it."""


class ConfigError(PicovlmError, ValueError):
    """An invalid configuration value or combination of values."""


class DataError(PicovlmError, ValueError):
    """A dataset that cannot be read, or a row in it that is not in the expected schema."""
