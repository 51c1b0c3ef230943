"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of each offending field."""


class DataQualityError(RuntimeError):
    """Too large a share of the training records could not be used."""


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, DataQualityError)
