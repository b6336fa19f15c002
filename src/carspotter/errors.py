"""Exceptions that mean "the user gave us something wrong" (as opposed to a bug in carspotter).

The CLI prints a `UserError` as one clear line and exits non-zero; any other exception keeps its traceback.
"""

# How PyTorch re-raises an exception from a DataLoader worker: the type, rebuilt from this text followed by the
# worker's whole traceback (torch.utils.data's ExceptionWrapper.reraise).
_WORKER_PREFIX = "Caught UserError in DataLoader worker"
_WORKER_LAST_LINE = "UserError: "


class UserError(Exception):
    """A user's mistake: bad path, bad config, corrupt file. The message says what, where and what to do.

    Raised in a DataLoader worker process, it reaches the main process rebuilt around the worker's traceback; only
    the worker's own message is kept, so it is the same one line as with ``num_workers=0``.
    """

    def __init__(self, message: str = "") -> None:
        if message.startswith(_WORKER_PREFIX) and _WORKER_LAST_LINE in message:
            message = message.rsplit(_WORKER_LAST_LINE, 1)[1].strip()
        super().__init__(message)
