"""The settings base: :class:`Settings` and :func:`setting` (a field's default, JSON-schema and doc)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InputError

POSITIVE_INT = {"type": "integer", "minimum": 1}


REQUIRED = dataclasses.MISSING  # a setting the config must give (listed in the schema's ``required``)


def setting(default, schema: Mapping, doc: str, key: str | None = None, runtime: bool = False, stats: bool = False):
    """A field of a settings class: its default (or :data:`REQUIRED`), its JSON-schema and its doc (the
    schema's description). ``key``: the config's name for it where that is not a Python name (``import``).
    ``runtime``: it changes how a job runs, never what it writes (requests in flight, a timeout), so it is
    kept out of the job's params and changing it reruns nothing (:func:`lossgeom.config.generation_spec`).
    ``stats``: a measure's setting read only by its statistics across models (an interval's coverage), so
    changing it reruns the statistics and not the evaluations (:func:`lossgeom.measures.job_settings`)."""
    meta = {"schema": dict(schema), "doc": doc, "key": key, "runtime": runtime, "stats": stats}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


@dataclass(frozen=True)
class Settings:
    """The base of every settings class (no fields of its own). Keys are the config's names."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(_key(f) for f in dataclasses.fields(cls))

    @classmethod
    def runtime_keys(cls) -> tuple[str, ...]:
        """The keys that change how a job runs, never what it writes (see :func:`setting`)."""
        return tuple(_key(f) for f in dataclasses.fields(cls) if f.metadata.get("runtime"))

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The keys without a default: the config must give them."""
        return tuple(_key(f) for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every key that has a default, with it (required keys are left out)."""
        return {_key(f): f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def schema(cls) -> dict[str, dict]:
        """The JSON-schema properties of these settings, each with its doc as the description."""
        return {_key(f): {**f.metadata["schema"], "description": f.metadata["doc"]} for f in dataclasses.fields(cls)}

    @classmethod
    def object_schema(cls) -> dict:
        """The whole (closed) object schema of a section: description, required keys and properties."""
        out = {"type": "object", "additionalProperties": False, "description": (cls.__doc__ or "").strip()}
        if cls.required():
            out["required"] = list(cls.required())
        out["properties"] = cls.schema()
        return out

    @classmethod
    def describe(cls, title: str, stats: tuple[str, ...] = ()) -> str:
        """``title:`` then a line per key with its doc (a command's ``--help`` for a spec it takes); keys in
        ``stats`` are marked as read by the statistics only."""
        lines = [f"{title}:"]
        for key, prop in cls.schema().items():
            lines.append(f"  {key}: {prop['description']}{' (its statistics only)' if key in stats else ''}")
        return "\n".join(lines)

    @classmethod
    def checked(cls, given: Any, where: str) -> dict[str, Any]:
        """``given`` (a section as a job's spec carries it) checked against :meth:`object_schema` and filled
        with the defaults; :class:`~lossgeom.errors.InputError` names ``where`` and the key otherwise."""
        import jsonschema

        try:
            jsonschema.validate(given if given is not None else {}, cls.object_schema())
        except jsonschema.ValidationError as e:
            key = ".".join(str(p) for p in e.absolute_path)
            raise InputError(f"{where}{'.' + key if key else ''}: {e.message}") from None
        return cls.filled(given)

    @classmethod
    def filled(cls, given: Mapping | None) -> dict[str, Any]:
        """``given`` (a config section, already validated) with every missing key at its default."""
        return {**cls.defaults(), **dict(given or {})}
