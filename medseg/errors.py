"""Errors a user can cause. Each carries a one-line message: what was wrong and how to fix it."""


class MedsegError(Exception):
    """Base class; run.py prints these as one line and exits non-zero."""


class ConfigError(MedsegError):
    """A config key has a bad value or a combination of keys cannot work."""


class DataError(MedsegError):
    """Input data is missing, unreadable or inconsistent."""


class CheckpointError(MedsegError):
    """A checkpoint is missing, unreadable or not a medseg checkpoint."""


class TrainingError(MedsegError):
    """Training cannot go on (for example repeated non-finite losses)."""
