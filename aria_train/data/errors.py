"""The one exception the data subsystem raises for bad input.

It subclasses ValueError so callers that already guard config errors catch it, and its message
is always a single line naming the culprit (file, line, prefix or token), so a command-line entry
point can print it without a stack trace.
"""


class DataError(ValueError):
    pass
