"""Exceptions raised by firepbt. Every message names the offending value and the rule."""

from __future__ import annotations


class FirePBTError(Exception):
    """Base class of every firepbt error."""


class ConfigError(FirePBTError, ValueError):
    """An invalid setting or search space, raised before any worker starts."""


class StoreError(FirePBTError):
    """The experiment store is unusable (corrupt, wrong format version, ...)."""


class StoreCorrupt(StoreError):
    """The store file exists but cannot be read; the file is never overwritten."""


class FormatVersionError(StoreError):
    """A store or checkpoint written by an unknown (newer) format version."""


class ExperimentLocked(StoreError):
    """Another live controller holds the experiment lock."""


class LockLost(ExperimentLocked):
    """This controller's lock was taken over by another one: it must stop without committing.

    Raised by a fenced store transaction (``transaction(fence=holder)``); nothing of that
    transaction is written.
    """


class CheckpointError(FirePBTError):
    """A checkpoint is missing, truncated or fails its checksum."""


class RunFailed(FirePBTError):
    """A run ended without any member holding a valid fitness, or its task cannot load in a
    worker; the message carries the first full traceback from the user's code."""


class TaskLoadError(RunFailed):
    """A worker process could not import the task (every segment would fail the same way)."""
