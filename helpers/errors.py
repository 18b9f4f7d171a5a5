"""Project exceptions.

Every error the helpers raise on purpose is a :class:`BookError` whose message
says *what* went wrong, *where* (file, line or record, field) and *how to fix
it*, so that a learner never has to read a traceback from deep inside a
library to know what to do next.
"""

from __future__ import annotations


class BookError(Exception):
    """Base class: a problem the learner can fix, explained in the message."""


class DatasetError(BookError):
    """A dataset file or image cannot be used as it is."""


class ModelDirError(BookError):
    """A directory is not a loadable InternVL2 model."""


class RunError(BookError):
    """A notebook run through the runner failed."""


class ProfileError(BookError):
    """An option was asked for that this machine cannot run (e.g. GPU-only on CPU)."""


class MissingOutputError(BookError):
    """A notebook needs a file an earlier notebook writes, and it is not there (:func:`helpers.env.require`)."""
