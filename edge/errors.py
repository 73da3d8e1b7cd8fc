"""The project's exception tree.

Everything that input (a file, a config, a model, the network) can trigger is raised as a
`ScansideError`; a bare `Exception` escaping a stage is a programming error and is allowed
to crash the process so that systemd restarts it.
"""

from __future__ import annotations

from pathlib import Path


class ScansideError(Exception):
    """Base class of every error the appliance reports rather than crashes on."""


class ConfigError(ScansideError):
    """The configuration file or a command-line override is invalid."""


class DicomError(ScansideError):
    """A DICOM file cannot be used.

    The message names the file, the tag (keyword and group/element), the value found and
    what was expected, in that order, like pydicom's own errors.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        tag: str | None = None,
        value: object = None,
        expected: str | None = None,
    ):
        self.path = str(path)
        self.problem = problem
        self.tag = tag
        self.value = value
        self.expected = expected
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """The message without the path: what a quarantine reason file records."""
        parts = []
        if self.tag:
            parts.append(f"{self.tag} {self.problem}" if self.value is None
                         else f"{self.tag} is {_shown(self.value)}: {self.problem}")
        else:
            parts.append(self.problem)
        if self.expected:
            parts.append(f"expected {self.expected}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):
        # Keyword-only arguments do not survive the default exception pickling, and these
        # errors cross process boundaries.
        return (_rebuild, (type(self), self.path, self.problem, self.tag, self.value,
                           self.expected))


class IncompleteDicomError(DicomError):
    """The file ends early or is still zero-filled: it may still be being written.

    The ingest stage retries such a file until it has been unchanged for the configured
    grace period, and only then quarantines it.
    """


class ModelError(ScansideError):
    """A model file is missing, unreadable or carries an invalid preprocessing spec."""


class BackendError(ScansideError):
    """An inference backend could not be loaded or failed to run."""


class DeliveryError(ScansideError):
    """A message could not be stored or handed to the broker."""


def _rebuild(cls, path, problem, tag, value, expected):
    return cls(path, problem, tag=tag, value=value, expected=expected)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
