"""The run's tables as the claim checks read them (:class:`RunTables`), with lookups that raise
:class:`Missing` when a value is absent (the claim's verdict is then "not run"), seen from one replicate
of the run at a time (:meth:`RunTables.at`)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label


class Missing(Exception):
    """An input a claim needs is absent: the verdict is 'not run'."""


def fmt(x: float) -> str:
    """A number as the claims table writes it: 3 significant digits, ``nan`` for a missing one."""
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3g}"


def pair_row(df: pd.DataFrame, col_a: str, col_b: str, a: str, b: str, missing: str) -> tuple[pd.Series, bool]:
    """The row of the unordered pair (a, b) in a table of pairs, and whether it is stored as (b, a);
    ``Missing(missing)`` when neither order is there."""
    for swapped, (x, y) in ((False, (a, b)), (True, (b, a))):
        row = df[(df[col_a] == x) & (df[col_b] == y)]
        if not row.empty:
            return row.iloc[0], swapped
    raise Missing(missing)


# the columns the checks read of each table, and what the table should be (named in the error of one that
# is not readable or lacks one of them)
NOISE_FLOOR = tuple("pair_a pair_b method_a method_b init data_order metric value data_floor random".split())
ADAPTERS = ("label", "norm", "effective_rank_mean")
PAIRWISE = (
    ("test_set", "model_a", "model_b", "acc_a", "acc_b", "p_holm"),
    "a pairwise.tsv of 'lossgeom measure-stats accuracy'",
)
LMC = (("pair_a", "pair_b", "metric", "value_a", "value_b", "barrier"), "a summary table of 'lossgeom lmc-summary'")
CKA = (("model_a", "model_b", "layer", "cka"), "a CKA table of 'lossgeom measure-stats activations'")
SPECTRUM = (("label", "statistic", "value"), "a summary.tsv of 'lossgeom base-spectrum'")
BEHAVIOUR = {
    "kl": (("model", "direction", "unit", "value", "seed_floor"), "a kl.tsv of 'lossgeom measure-stats samples'"),
    "forgetting": (("model", "value", "seed_floor"), "a forgetting.tsv of 'lossgeom measure-stats samples'"),
    "forgetting_vs_kl": (
        ("predictor", "n", "rho", "ci_low", "ci_high"),
        "a forgetting_vs_kl.tsv of 'lossgeom measure-stats samples'",
    ),
}


class RunTables:
    """The run's tables, with lookups that raise :class:`Missing` when a value is absent."""

    def __init__(
        self,
        geometry: Path,
        eval_dir: Path | None,
        lmc: Path | None,
        cka: Path | None,
        roles: dict[str, str],
        seed: int,
        base_spectrum: Path | None = None,
        behaviour: Path | None = None,
    ):
        self.roles, self.seed = roles, seed
        self.replicate: tuple[int, int | None] = (seed, None)  # (init seed, data seed) of the adapters read
        self.nf = read_tsv_or(
            geometry / "noise_floor.tsv", InputError, NOISE_FLOOR, "a noise_floor.tsv of 'lossgeom geometry'"
        )
        self.adapters = read_tsv_or(
            geometry / "adapters.tsv", InputError, ADAPTERS, "an adapters.tsv of 'lossgeom geometry'"
        )
        self.pairwise = read_table(eval_dir / "pairwise.tsv", *PAIRWISE) if eval_dir else None
        self.lmc = read_table(lmc, *LMC) if lmc else None
        self.cka = read_table(cka, *CKA) if cka else None
        self.spectrum = read_table(base_spectrum / "summary.tsv", *SPECTRUM) if base_spectrum else None
        self.behaviour = {n: read_table(behaviour / f"{n}.tsv", *t) for n, t in BEHAVIOUR.items()} if behaviour else {}

    def label(self, role: str, seed: int | None = None) -> str:
        """The label of the adapter of the method playing ``role`` at init ``seed`` (default: this view's
        replicate: the shared-init seed's adapter, its data-order replicate's, or another init seed's)."""
        if role not in self.roles:
            raise Missing(f"no method plays {role}")
        return str(Label(self.roles[role], *self.replicate) if seed is None else Label(self.roles[role], seed))

    def replicates(self) -> list[str]:
        """The run's replicates, named as label suffixes: the shared-init seed (``seed42``), then its data-order
        replicates (``seed42data7``), then the other init seeds (``seed123``), as the geometry's adapters have
        them. A claim is checked on each (:meth:`at`); one whose inputs a replicate lacks skips it."""
        names = set(self.nf["pair_a"]) | set(self.nf["pair_b"])
        labels = [x for x in map(Label.try_parse, names) if x is not None]  # a name that is not a label: no adapter
        data = sorted({(x.seed, x.data_seed) for x in labels if x.data_seed is not None})
        seeds = sorted({x.seed for x in labels if x.data_seed is None} - {self.seed})
        return [f"seed{self.seed}", *(f"seed{s}data{d}" for s, d in data), *(f"seed{s}" for s in seeds)]

    def at(self, replicate: str) -> RunTables:
        """This run seen from ``replicate`` (a name of :meth:`replicates`): :meth:`label` then gives that
        replicate's adapters. The tables are shared, not copied."""
        label = Label.parse(f"x/{replicate}")  # x: any method; the replicate is the label's seed part
        view = copy.copy(self)
        view.replicate = (label.seed, label.data_seed)
        return view

    def init_seeds(self, role: str) -> list[int]:
        """The init seeds of the geometry's adapters of the method playing ``role``, replicates left out."""
        names = set(self.nf["pair_a"]) | set(self.nf["pair_b"])
        labels = [Label.try_parse(n) for n in names]  # a name that is not a label is no adapter of a method
        return sorted({l.seed for l in labels if l is not None and l.method == self.roles[role] and not l.is_replicate})

    def pair(self, a: str, b: str, metric: str = "cosine_global") -> pd.Series:
        """The noise-floor row of labels ``a``, ``b`` (either order) and ``metric``."""
        nf = self.nf[self.nf["metric"] == metric]
        row = nf[((nf["pair_a"] == a) & (nf["pair_b"] == b)) | ((nf["pair_a"] == b) & (nf["pair_b"] == a))]
        if row.empty:
            raise Missing(f"no geometry pair {a} / {b}")
        return row.iloc[0]

    def cos(self, ra: str, rb: str) -> float:
        return float(self.pair(self.label(ra), self.label(rb))["value"])

    def same_method(self, role: str, init: str, metric: str = "cosine_global") -> pd.DataFrame:
        """Rows of a method's own pairs: ``init='other'``: this replicate's adapter against the method's other
        init seeds; ``'shared'``: the method's data-order pairs (the floor: every replicate's)."""
        m = self.roles.get(role)
        if m is None:
            raise Missing(f"no method plays {role}")
        nf = self.nf[(self.nf["metric"] == metric) & (self.nf["method_a"] == m) & (self.nf["method_b"] == m)]
        if init == "other":
            mine = self.label(role)
            nf = nf[(nf["init"] == "other") & ((nf["pair_a"] == mine) | (nf["pair_b"] == mine))]
        else:
            nf = nf[(nf["init"] == init) & (nf["data_order"] == "other")]
        if nf.empty:
            raise Missing(f"no {init}-init pair of {m}")
        return nf

    def holm_p(self, a: str, b: str) -> tuple[float, float, float]:
        """(acc_a, acc_b, Holm p) of models ``a``, ``b`` on the first test set."""
        if self.pairwise is None:
            raise Missing("no eval/pairwise.tsv")
        pw = self.pairwise[self.pairwise["test_set"] == self.pairwise["test_set"].iloc[0]]
        r, swapped = pair_row(pw, "model_a", "model_b", a, b, f"no McNemar pair {a} / {b}")
        acc = (float(r["acc_b"]), float(r["acc_a"])) if swapped else (float(r["acc_a"]), float(r["acc_b"]))
        return (*acc, float(r["p_holm"]))

    def barrier(self, a: str, b: str, metric: str = "answer_ce") -> tuple[float, float, float]:
        """(value_a, value_b, barrier) of the sweep between ``a`` and ``b`` (either direction)."""
        if self.lmc is None:
            raise Missing("no lmc/summary.tsv")
        s = self.lmc[self.lmc["metric"] == metric]
        r, swapped = pair_row(s, "pair_a", "pair_b", a, b, f"no LMC sweep {a} / {b}")
        values = (float(r["value_b"]), float(r["value_a"])) if swapped else (float(r["value_a"]), float(r["value_b"]))
        return (*values, float(r["barrier"]))

    def cka_layers(self, a: str, b: str) -> pd.Series:
        """Linear CKA per layer (index: layer) of models ``a``, ``b``."""
        if self.cka is None:
            raise Missing("no cka/cka.tsv")
        c = self.cka
        rows = c[((c["model_a"] == a) & (c["model_b"] == b)) | ((c["model_a"] == b) & (c["model_b"] == a))]
        if rows.empty:
            raise Missing(f"no CKA pair {a} / {b}")
        return rows.set_index("layer")["cka"].sort_index()

    def spectrum_row(self, role: str, statistic: str) -> pd.Series:
        """The ``base_spectrum/summary.tsv`` row of ``statistic`` for this replicate's adapter of ``role``."""
        if self.spectrum is None:
            raise Missing("no base_spectrum/summary.tsv")
        s = self.spectrum
        row = s[(s["label"] == self.label(role)) & (s["statistic"] == statistic)]
        if row.empty:
            raise Missing(f"no base-spectrum {statistic} of {self.label(role)}")
        return row.iloc[0]

    def behaviour_table(self, name: str) -> pd.DataFrame:
        """``behaviour/{name}.tsv`` (kl, forgetting, forgetting_vs_kl)."""
        table = self.behaviour.get(name)
        if table is None:
            raise Missing(f"no behaviour/{name}.tsv")
        return table

    def behaviour_row(self, name: str, label: str, **match) -> pd.Series:
        """The row of adapter ``label`` in ``behaviour/{name}.tsv`` whose columns equal ``match``."""
        t = self.behaviour_table(name)
        rows = t[t["model"] == label]
        for col, value in match.items():
            rows = rows[rows[col] == value]
        if rows.empty:
            raise Missing(f"no behaviour/{name}.tsv row of {label}")
        return rows.iloc[0]


def read_table(path: Path, columns=(), what: str = "a readable TSV table") -> pd.DataFrame | None:
    """The table at ``path``, None where there is none; one that is not readable or lacks one of ``columns``
    stops with one :class:`~lossgeom.errors.InputError` line naming it and what it should be (``what``)."""
    if path is None or not Path(path).exists():
        return None
    return read_tsv_or(Path(path), InputError, columns, what)
