"""charlm's own error types: problems a user can fix, reported as one line.

Library code speaks about the thing (the corpus, the run folder, the learning
rate), never about command-line flags. Where the advice is best given as a flag,
the error carries a ``kind`` and the values of its message as ``details``; the
CLI words that kind its own way (see ``charlm.cli.common``).
"""


class CharlmError(Exception):
    """A problem with the user's input or environment. The CLI prints
    ``error: <message>`` on stderr and exits with ``exit_code``; the message says
    what is wrong and what to do. ``kind`` names the situation for a front end that
    words it its own way, from ``details``."""

    exit_code = 1

    def __init__(self, message: str, *, kind: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


class CorpusError(CharlmError):
    """The training or scoring text cannot be used."""


class CheckpointError(CharlmError):
    """A checkpoint file is missing, damaged or not a charlm checkpoint."""


class UsageError(CharlmError):
    """An option value or combination that cannot work."""

    exit_code = 2


class ConfigError(UsageError):
    """A setting whose value cannot work. ``setting`` is the config field's name
    and ``problem`` the rest of the sentence, so the CLI can name its own flag:
    ``ConfigError("lr", "must be greater than 0 (got -1).")``."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting = setting
        self.problem = problem

    def __reduce__(self):  # rebuilt from its two parts, e.g. when it crosses a process boundary
        return (type(self), (self.setting, self.problem))


class TrainingDiverged(CharlmError):
    """The loss, the gradient or the weights stopped being finite numbers."""


class RunFolderBusyError(CharlmError):
    """Another process holds the run folder's lock (``charlm.runlock``): it is training there."""


class WorkerError(CharlmError):
    """A training worker process ended, or did not answer in time; the step it was in
    is lost, while the model is still as the last completed step left it."""


class NotEnoughMemory(CharlmError):
    """The work asked for needs more memory than the machine has available.

    ``kind`` is "memory"; ``details``: ``what`` (the work, e.g. "training this
    model"), ``needed`` and ``available`` (bytes), ``breakdown`` (the largest
    parts, worded), ``smaller`` (setting → a smaller value with which it fits; empty
    when no setting can help)."""
