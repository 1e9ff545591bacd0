"""Plug-in discovery, the one rule the loss and measure registries share: a module of the package is a plug-in
exactly when it defines the registry's attribute (``LOSS``, ``MEASURE``), an instance of the plug-in class with
a ``name``. Every module is imported; one without the attribute holds what plug-ins share. A module that
defines a named subclass but no attribute (a plug-in whose attribute is misspelt), an attribute that is not a
named plug-in, and one name in two modules stop the import.
"""

from __future__ import annotations

import importlib
import pkgutil


def _named_classes(module, kind: type) -> list[str]:
    """The subclasses of ``kind`` that ``module`` defines itself with a ``name`` (meant to be instantiated as a
    plug-in, not bases such as ``RowsLoss``)."""
    return [
        obj.__name__
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, kind) and obj.__module__ == module.__name__ and "name" in vars(obj)
    ]


def discover(package: str, path, attr: str, kind: type) -> dict[str, object]:
    """The plug-ins of ``package`` (its ``__path__``: ``path``): name -> the instance its module's ``attr``
    holds, in module name order (callers sort them as their registry lists them)."""
    found: dict[str, object] = {}
    where: dict[str, str] = {}  # plug-in name -> its module
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        plugin = getattr(module, attr, None)
        if plugin is None:
            named = _named_classes(module, kind)
            if named:
                raise RuntimeError(
                    f"module {module.__name__} defines the {kind.__name__.lower()} class(es) {named} but no {attr}: "
                    f"a {kind.__name__.lower()} module sets {attr} = The{kind.__name__}()"
                )
            continue
        if not isinstance(plugin, kind) or not isinstance(getattr(plugin, "name", None), str):
            raise RuntimeError(
                f"{module.__name__}.{attr} is {plugin!r}, not an instance of a {kind.__name__} subclass with a name"
            )
        if plugin.name in found:
            raise RuntimeError(
                f"{kind.__name__.lower()} {plugin.name!r} is defined twice (modules {where[plugin.name]} and {info.name})"
            )
        found[plugin.name], where[plugin.name] = plugin, info.name
    return found
