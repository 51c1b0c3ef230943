"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""

from __future__ import annotations

from typing import Optional


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of each offending field."""


class DataQualityError(RuntimeError):
    """Too large a share of the training records could not be used."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class HubUnreachable(RuntimeError):
    """Pretrained weights (or a hub model's config) had to come from the model hub, which cannot be reached, and
    they are not in the local cache. Raised instead of open_clip's RuntimeError; the message says how to pass a
    local checkpoint file instead."""


class CacheMismatch(ValueError):
    """Reinforced data (``distill.teacher_cache``) that does not describe the data being read: a record's content
    fingerprint differs, or the cache holds no view of a record training can use. Never used silently."""


class RunFailed(RuntimeError):
    """A run that trained in a process of its own (``clipkd ablate --jobs``) failed; the message names it and
    shows the end of its log."""


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, DataQualityError, TrainingDiverged, HubUnreachable,
               RunFailed)


def worker_message(exc: BaseException) -> Optional[str]:
    """The original message of an exception that a DataLoader worker raised, or None if it is not one.

    torch re-raises a worker's exception as ``type(exc)("Caught X in DataLoader worker process N.\nOriginal
    Traceback ...\nmodule.X: message")``; this returns ``message`` alone, for a clean one-line error.
    """
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    if not (text.startswith("Caught ") and "DataLoader worker" in text and "Original Traceback" in text):
        return None
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    head, sep, message = text.rpartition(f"\n{name}: ")
    return message.strip() if sep else None


class ExportError(ValueError):
    """A model that cannot be exported in the requested format (a tower that cannot be traced, an architecture the
    format cannot hold), or an export whose check against PyTorch failed. The message names the part."""
