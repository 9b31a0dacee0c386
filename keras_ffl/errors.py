"""Errors whose message is one line meant for the user (no TensorFlow import here)."""


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
