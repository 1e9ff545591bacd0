"""Adapter labels: the one parser and formatter of the names that key every adapter of a study.

Conventions:

* a label is ``"{method}/seed{seed}"``, or ``"{method}/seed{seed}data{data_seed}"`` for a data-order
  replicate (the LoRA init of ``seed``, the data order of ``data_seed``);
* ``method`` is ``[A-Za-z0-9_-]+`` (the schema's pattern for method names); seeds are non-negative
  integers written in plain decimal (no sign, no leading zeros: what ``f"{n}"`` writes), so that
  ``str(Label.parse(text)) == text`` for every text that parses;
* the label is also the adapter's path below ``{results}/adapters/``: ``{results}/adapters/{method}/
  seed{seed}[data{data_seed}]/``, and a saved step ``N`` lives in ``step{N}/`` below it.

Ground floor of the package: imports nothing from it (config, geometry, claims and figures import this).
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

METHOD_PATTERN = r"[A-Za-z0-9_-]+"
_INT = r"(?:0|[1-9][0-9]*)"  # canonical decimal only: "seed042" would name a directory no job writes
_METHOD_RE = re.compile(METHOD_PATTERN)
_LABEL_RE = re.compile(rf"(?P<method>{METHOD_PATTERN})/seed(?P<seed>{_INT})(?:data(?P<data>{_INT}))?")
FORMS = "'{method}/seed<N>' or '{method}/seed<N>data<M>'"


def _check_count(name: str, value) -> int:
    """``value`` as an ``int`` if it is a non-negative integer (numpy integers included, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def step_dir(adapter_dir: str | Path, step: int) -> Path:
    """The directory of the adapter saved at optimiser step ``step``: ``{adapter_dir}/step{step}``."""
    return Path(adapter_dir) / f"step{_check_count('step', step)}"


@dataclass(frozen=True)
class Label:
    """One adapter of a study: ``method``, LoRA-init ``seed`` and, for a data-order replicate only,
    ``data_seed``. ``str(label)`` is its label text; fields are checked on construction, so every
    ``Label`` formats to a text :meth:`parse` reads back to an equal ``Label``."""

    method: str
    seed: int
    data_seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.method, str) or not _METHOD_RE.fullmatch(self.method):
            raise InputError(f"adapter label: method {self.method!r} is not of the form {METHOD_PATTERN}")
        # object.__setattr__: the dataclass is frozen; normalises numpy integers to int
        object.__setattr__(self, "seed", _check_count("adapter label: seed", self.seed))
        if self.data_seed is not None:
            object.__setattr__(self, "data_seed", _check_count("adapter label: data_seed", self.data_seed))

    @classmethod
    def parse(cls, text: str) -> Label:
        """``"sft/seed42"`` -> ``Label("sft", 42)``; ``"sft/seed42data7"`` -> ``Label("sft", 42, 7)``.

        Raises:
            ValueError: ``text`` is not one of the two forms (the message names it and both forms).
        """
        match = _LABEL_RE.fullmatch(text) if isinstance(text, str) else None  # fullmatch: no "\n" slips past "$"
        if match is None:
            raise InputError(f"adapter label {text!r} is not of the form {FORMS}")
        data = match["data"]
        return cls(match["method"], int(match["seed"]), None if data is None else int(data))

    @classmethod
    def try_parse(cls, text: str) -> Label | None:
        """:meth:`parse`, or ``None`` where ``text`` is not a label (tables where any name may stand)."""
        try:
            return cls.parse(text)
        except ValueError:
            return None

    @classmethod
    def method_of(cls, name: str) -> str:
        """The method of a model name: an adapter label's (``"sft/seed42data7"`` -> ``"sft"``); any other
        name (the base model ``"base"``, a directory's own name) is its own method."""
        label = cls.try_parse(name)
        return name if label is None else label.method

    @classmethod
    def dir_name_of(cls, name: str) -> str:
        """The seed part of a model name: an adapter label's :attr:`dir_name` (``"seed42"``,
        ``"seed42data7"``); ``""`` for any other name (the base model ``"base"``)."""
        label = cls.try_parse(name)
        return "" if label is None else label.dir_name

    @classmethod
    def from_dir(cls, path: str | Path) -> Label:
        """The label of an adapter directory ``.../{method}/seed{seed}`` or ``.../{method}/seed{seed}data{d}``
        (its last two path components; the path is made absolute lexically, without following links,
        so a linked adapter directory keeps the name the study gave it).

        Raises:
            ValueError: the path does not end in one of those two forms.
        """
        p = Path(os.path.abspath(path))
        label = cls.try_parse(f"{p.parent.name}/{p.name}")
        if label is None:
            raise InputError(
                f"{str(path)!r} is not an adapter directory .../{{method}}/seed<N> or .../{{method}}/seed<N>data<M>"
            )
        return label

    @property
    def dir_name(self) -> str:
        """The last component of the adapter's directory (and of its label): ``seed{N}`` or ``seed{N}data{M}``."""
        return f"seed{self.seed}" if self.data_seed is None else f"seed{self.seed}data{self.data_seed}"

    def __str__(self) -> str:
        return f"{self.method}/{self.dir_name}"

    @property
    def init_seed(self) -> int:
        """The seed of the LoRA init (``N`` of ``seed<N>``), replicate or not."""
        return self.seed

    @property
    def data_order_seed(self) -> int:
        """The data-order seed the label states: ``data_seed`` for a replicate, else the init seed (each
        seed sets both by default; a study with ``training.data_seed`` fixed records the one it used in
        ``train_info.json``, which the label does not show)."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def is_replicate(self) -> bool:
        """Whether this is a data-order replicate (``.../seed<N>data<M>``)."""
        return self.data_seed is not None

    def adapter_dir(self, results_root: str | Path, step: int | None = None) -> Path:
        """``{results_root}/adapters/{method}/seed{seed}[data{data_seed}]``; with ``step``, the
        adapter saved at that step (``.../step{step}``)."""
        path = Path(results_root) / "adapters" / self.method / self.dir_name
        return path if step is None else step_dir(path, step)


def wildcard_pattern(methods, replicates: bool = True) -> str:
    """A regex matching exactly the labels of ``methods`` (a Snakemake wildcard constraint): ``{m}/seed<N>``,
    and ``{m}/seed<N>data<M>`` too where ``replicates``; seeds canonical as :meth:`Label.parse` reads them."""
    names = sorted(methods, key=len, reverse=True)  # longest first: "sft_lr10x" before "sft"
    for name in names:
        Label(name, 0)  # checks the method's form
    data = rf"(?:data{_INT})?" if replicates else ""
    return rf"(?:{'|'.join(map(re.escape, names))})/seed{_INT}{data}"


def mean_pair_difference(values, labels: list[Label | None], method: str, kind: str) -> float:
    """The noise floor of a per-adapter statistic: the mean |difference| of ``values`` (one per label,
    in ``labels``' order; None: no adapter, e.g. the base) over ``method``'s pairs of adapters of one
    kind: ``"data"`` (the same init seed, another data order) or ``"seed"`` (another init seed).
    NaN where the method has no such pair."""
    diffs = []
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            la, lb = labels[a], labels[b]
            if la is None or lb is None or la.method != method or lb.method != method:
                continue
            shared = la.seed == lb.seed
            if (kind == "data" and shared and la.data_order_seed != lb.data_order_seed) or (
                kind == "seed" and not shared
            ):
                diffs.append(abs(float(values[a]) - float(values[b])))
    return sum(diffs) / len(diffs) if diffs else float("nan")
