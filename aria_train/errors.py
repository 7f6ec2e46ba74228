"""The error type for problems a user can fix (bad input, missing files); shown as one line."""


class UserError(RuntimeError):
    pass
