"""Exceptions that mean "the user gave us something wrong" (as opposed to a bug in carspotter).

The CLI prints a `UserError` as one clear line and exits non-zero; any other exception keeps its traceback.
"""


class UserError(Exception):
    """A user's mistake: bad path, bad config, corrupt file. The message says what, where and what to do."""
