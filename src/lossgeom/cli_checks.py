"""Command-line values checked against the settings they stand for, before a command runs: a value the config
would refuse (its schema, :mod:`lossgeom.settings`, the one place of each range) is refused on the command line
too, in one line naming the flag, the value, the range and the config key (``lossgeom.cli.main`` prints it).

The workflow's rules pass values the config's schema already checked; this is for commands run by hand
(``lossgeom geometry ... --top-k 0`` used to write NaN tables and record ``top_k: 1``).
"""

from __future__ import annotations

from argparse import Namespace

from .errors import InputError
from .settings import BaseSpectrumSettings, GeometrySettings

# (command, argparse dest) -> (config section, its settings class, key). The model-running commands take
# their settings as one spec instead, checked against the settings' schemas where it is read (lossgeom.behaviour.job,
# lossgeom.measures.check_spec).
CHECKED = {
    ("geometry", "top_k"): ("geometry", GeometrySettings, "top_k"),
    ("trajectory", "top_k"): ("geometry", GeometrySettings, "top_k"),
    ("base-spectrum", "top_k"): ("base_spectrum", BaseSpectrumSettings, "top_k"),
    ("base-spectrum", "threshold"): ("base_spectrum", BaseSpectrumSettings, "threshold"),
    ("base-spectrum", "seed"): ("base_spectrum", BaseSpectrumSettings, "seed"),
}


class ArgumentRangeError(InputError):
    """A command-line value outside the range of the setting it stands for."""


def check_arguments(a: Namespace) -> None:
    """Raise :class:`ArgumentRangeError` for the first value of ``a`` (parsed arguments of ``a.command``) that
    the schema of its setting refuses, and :class:`InputError` for flags that need another one."""
    from jsonschema import Draft202012Validator

    generation = getattr(a, "generation", None)
    openai = isinstance(generation, dict) and generation.get("backend") == "openai"
    if a.command == "rollouts" and openai and a.journal is None:
        raise InputError("the openai backend needs --journal (where completed requests survive a restart)")

    for (command, dest), (section, settings, key) in CHECKED.items():
        if command != a.command or getattr(a, dest, None) is None:
            continue
        value = getattr(a, dest)
        schema = {k: v for k, v in settings.schema()[key].items() if k != "description"}
        if isinstance(value, list) and schema.get("type") != "array":
            schema = {"type": "array", "items": schema}
        error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
        if error is not None:
            flag = "--" + dest.replace("_", "-")
            raise ArgumentRangeError(f"{flag} {value}: {error.message} (the config's {section}.{key})")
