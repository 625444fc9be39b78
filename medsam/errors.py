"""Exceptions for user mistakes: one line, naming the file (or prompt) and what is wrong.

Every error a user can cause derives from :class:`MedsamError` *and* the matching
builtin (``ValueError``/``FileNotFoundError``), so ``except ValueError`` keeps working
and the CLI can turn them into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedsamError", "InputFileError", "MissingInputError", "OutputExistsError", "PromptError"]


class MedsamError(Exception):
    """Base class of all errors caused by user input."""


class InputFileError(MedsamError, ValueError):
    """An input file or folder that cannot be read: ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = one_line(problem)
        super().__init__(f"{one_line(str(path))}: {self.problem}")


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters (e.g. from a damaged file's
    header, quoted in a message) shown as ``?``, so that a message stays one line."""
    return "".join(c if c.isprintable() else "?" for c in text)


class MissingInputError(InputFileError, FileNotFoundError):
    """The input path does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "no such file or folder")


class OutputExistsError(MedsamError, FileExistsError):
    """The output exists and ``overwrite`` was not given."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: already exists; pass overwrite=True (CLI: --overwrite) to replace it")


class PromptError(MedsamError, ValueError):
    """A prompt that is invalid for the image it is given on."""
