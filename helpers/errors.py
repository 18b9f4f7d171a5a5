"""Project exceptions: one family, so a learner can tell a problem to fix from a bug.

Every error the helpers raise on purpose is a :class:`BookError` whose message
says *what* went wrong, *where* (file, line or record, field) and *how to fix
it*, so that a learner never has to read a traceback from deep inside a
library to know what to do next.

The command-line tools (``python -m helpers.book``, ``helpers.site``,
``helpers.data``, ``helpers.infer``, ``helpers.tiny``, ``helpers.env``) print
``error: <message>`` on stderr and exit with the status :func:`exit_status`
gives: **1** when a run or a check failed (:class:`RunError`: a notebook, a
site build, training), **2** when the input cannot be used (every other
:class:`BookError`, like argparse's own usage errors).
"""

from __future__ import annotations

import sys

__all__ = [
    "BookError",
    "UsageError",
    "DatasetError",
    "ModelDirError",
    "MissingOutputError",
    "ImageSizeError",
    "RunError",
    "ProfileError",
    "InferenceError",
    "ImageError",
    "PromptError",
    "SessionLengthError",
    "BackendError",
    "exit_status",
    "report",
]


class BookError(Exception):
    """Base class: a problem the learner can fix, explained in the message."""


class UsageError(BookError):
    """A command or function was given something it cannot use: a missing file, an unknown name, bad YAML."""


class DatasetError(BookError):
    """A dataset file or image cannot be used as it is."""


class ModelDirError(BookError):
    """A directory is not a loadable InternVL2 model."""


class MissingOutputError(BookError):
    """A notebook needs a file an earlier notebook writes, and it is not there (:func:`helpers.env.require`)."""


class ImageSizeError(BookError, ValueError):
    """An image size that no tiling exists for (zero or negative); also a ``ValueError``."""


class RunError(BookError):
    """A run failed: a notebook executed by the runner, a site build, a training run."""


class ProfileError(BookError):
    """An option was asked for that this machine cannot run (e.g. GPU-only on CPU)."""


# helpers.infer's errors (re-exported there: ``infer.ImageError`` is this class)


class InferenceError(BookError):
    """A request the pipeline cannot answer as it is given; the message says how to fix it."""


class ImageError(InferenceError):
    """An image is missing, unreadable or of a type the pipeline does not read."""


class PromptError(InferenceError):
    """The prompt and the images do not fit together (``<image>`` placeholders vs images)."""


class SessionLengthError(InferenceError):
    """The conversation (prompt, image tokens and new tokens) is longer than ``session_len``."""


class BackendError(ProfileError):
    """The backend that was asked for cannot run on this machine."""


def exit_status(exc: BookError) -> int:
    """The exit status a command-line tool returns for ``exc``: 1 for a failed run, 2 for unusable input.

    >>> exit_status(RunError("notebook 04 failed")), exit_status(DatasetError("no such file"))
    (1, 2)
    """
    return 1 if isinstance(exc, RunError) else 2


def report(exc: BookError) -> int:
    """Print ``error: <message>`` on stderr and return :func:`exit_status` (what every CLI's ``main`` does).

    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     status = report(UsageError("no notebook matches '09'"))
    >>> status, err.getvalue()
    (2, "error: no notebook matches '09'\\n")
    """
    print(f"error: {exc}", file=sys.stderr)
    return exit_status(exc)
