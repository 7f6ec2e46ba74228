"""The error for a configuration that cannot run."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming the key."""
