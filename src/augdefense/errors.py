"""Errors that a user can act on: each message names the file, key or value at fault."""


class AugdefenseError(Exception):
    """Base class; the CLI prints these without a traceback."""


class ConfigError(AugdefenseError):
    """A config entry is unknown, of the wrong type, or out of range."""


class DataError(AugdefenseError):
    """A dataset is missing, corrupted or inconsistent."""


class ArtifactError(AugdefenseError):
    """A workflow artifact (prepared data, poison, model) is unreadable or malformed."""


class TrainingError(AugdefenseError):
    """Training diverged (NaN/Inf loss) or could not proceed."""
