"""Errors whose message is one line meant for the user (no TensorFlow import here)."""

import difflib


class ConfigError(ValueError):
    """A configuration that cannot run: bad flags, incompatible settings, a taken model_dir."""


class DataError(RuntimeError):
    """Data that is missing or cannot be read."""


class UsageError(ConfigError):
    """A command given too little to start: its text (several lines) says how to begin."""


class HelpRequested(Exception):
    """``--help`` was given; the exception's text is the help to print."""


class WriteError(OSError):
    """The run directory could not be written (full disk, no permission); nothing already
    there was replaced."""


class ResumeError(RuntimeError):
    """A resume checkpoint that looked whole could not be loaded."""


def suggestion(value, choices):
    """``" (did you mean 'ffl'?)"`` for the nearest of ``choices`` to a misspelt ``value``, or ""."""
    close = difflib.get_close_matches(str(value).lower(), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
