"""The one exception type for bad input: the CLI reports it as a single line, with no traceback."""


class ConfigError(Exception):
    """The config or the data given cannot work; the message says what is wrong and how to fix it."""
