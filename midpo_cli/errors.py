"""Error types the CLI maps to one stderr line and a stable exit code.

Scripts call midpo; they need to tell "you gave me bad input" (2) from "training blew up" (3)
from "interrupted, resumable" (130) without parsing text.
"""

from __future__ import annotations


class MidpoError(Exception):
    """Base class: the message is shown as-is on one line, no traceback unless --debug."""

    exit_code = 1


class InputError(MidpoError):
    """Bad recipe, flag, file, column or row: the message names it."""

    exit_code = 2


class TrainingError(MidpoError):
    """Training diverged (NaN/inf) or an artifact failed its post-save check."""

    exit_code = 3


class ArtifactCheckError(TrainingError):
    """A saved artifact failed its post-save check (engine/artifacts.py): nothing was put in its place, and a
    stage keeps its previous finished result (pipeline/folders.py `keep_finished`)."""


class GateError(MidpoError):
    """A score model failed its sanity audit and the pipeline refuses to use it."""

    exit_code = 4


class Interrupted(MidpoError):
    """SIGINT/SIGTERM: a checkpoint was written (`resumable`); how to continue depends on the command.

    `pipeline run` resumes on its own, a stage command needs --resume: the command says which
    (`continue_with`), not the training loop that raised it.
    """

    exit_code = 130

    def __init__(self, message: str, *, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable

    def continue_with(self, how: str) -> Interrupted:
        """The same interruption, its message ending with how to continue (only when a checkpoint exists)."""
        return Interrupted(f"{self}; {how}", resumable=True) if self.resumable else self
