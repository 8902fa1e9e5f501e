"""charlm's own error types: problems a user can fix, reported as one line."""


class CharlmError(Exception):
    """A problem with the user's input or environment. The CLI prints
    ``error: <message>`` on stderr and exits with ``exit_code``; the message says
    what is wrong and what to do."""

    exit_code = 1


class CorpusError(CharlmError):
    """The training or scoring text cannot be used."""


class CheckpointError(CharlmError):
    """A checkpoint file is missing, damaged or not a charlm checkpoint."""


class UsageError(CharlmError):
    """An option value or combination that cannot work."""

    exit_code = 2
