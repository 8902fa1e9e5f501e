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


class ConfigError(UsageError):
    """A setting whose value cannot work. ``setting`` is the config field's name
    and ``problem`` the rest of the sentence, so the CLI can name its own flag:
    ``ConfigError("lr", "must be greater than 0 (got -1).")``."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting = setting
        self.problem = problem
