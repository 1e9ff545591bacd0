"""The project's one exception type for faults in the input (:class:`InputError`).

``lossgeom.cli.main`` prints an :class:`InputError` as one line (``lossgeom: error: ...``) and exits 2; any
other exception keeps its traceback, so that a bug looks like a bug. Each module's own input error
(:class:`~lossgeom.config.ConfigError`, :class:`~lossgeom.data.rollouts.RolloutError`, ...) subclasses it.
"""

from __future__ import annotations


class InputError(ValueError):
    """A fault in what the study was given: a file, a setting, an adapter, a cache, an endpoint's answer, a
    command-line value. The message names it and what to do; the CLI prints it as that one line, with no
    traceback.

    A subclass of :class:`ValueError`, so callers and tests that catch ``ValueError`` keep working. Raise it
    (or a module's subclass of it) only for bad input; an internal invariant that only a bug can break stays
    a plain ``ValueError`` (or an ``AssertionError``), and the CLI shows its traceback.
    """
