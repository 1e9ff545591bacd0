"""This run's number, floor and verdict for each claim of the paper (``results/claims.tsv``).

Inputs are the tables the other stages wrote: ``geometry/noise_floor.tsv`` (pairwise values with
their floors and random levels), ``geometry/adapters.tsv`` (norms, effective ranks),
``eval/pairwise.tsv`` (exact McNemar with Holm), ``lmc/summary.tsv`` (barriers),
``cka/cka.tsv`` and ``base_spectrum/summary.tsv`` (intruder dimensions, rotation and singular-value
change of each delta against the base, with chance levels and floors). ``roles`` maps the paper's six methods (``sft rft dft rift grpo dpo``) and its two
extra runs (``lr10x``: SFT at 10x the learning rate; ``online_grpo``) to this study's method names; ``seed`` is the seed whose adapters share a LoRA init (cross-method values
at that seed are compared with the data-order floor, cross-seed values with the init-seed floor).

Each verdict follows the claim's ``rule`` (``paper_claims.tsv``), fixed in code below, never tuned
per run: ``holds``, ``fails``, or ``not run`` when the inputs for it are absent (a method, a pair
or a table the study did not produce). Numbers are rounded to 3 significant digits in text.
Output columns: ``claim_id, group, source, claim, paper, this_run, floor, random, verdict, rule``
(``random``: the random level, or the chance level of a base-spectrum statistic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PAPER_ROLES
from ..fsutil import write_table
from ..labels import Label
from .paper import paper_claims

ROLES = tuple(PAPER_ROLES)  # the paper's six methods, named where the config maps them to losses
EXTRA_ROLES = ("lr10x", "online_grpo")  # the paper's extra runs: checked against SFT, not part of the six
NOT_RUN = "not run"


class _Missing(Exception):
    """An input a claim needs is absent: the verdict is 'not run'."""


def _f(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _pair_row(df: pd.DataFrame, col_a: str, col_b: str, a: str, b: str, missing: str) -> tuple[pd.Series, bool]:
    """The row of the unordered pair (a, b) in a table of pairs, and whether it is stored as (b, a);
    ``_Missing(missing)`` when neither order is there."""
    for swapped, (x, y) in ((False, (a, b)), (True, (b, a))):
        row = df[(df[col_a] == x) & (df[col_b] == y)]
        if not row.empty:
            return row.iloc[0], swapped
    raise _Missing(missing)


class RunTables:
    """The run's tables, with lookups that raise :class:`_Missing` when a value is absent."""

    def __init__(
        self,
        geometry: Path,
        eval_dir: Path | None,
        lmc: Path | None,
        cka: Path | None,
        roles: dict[str, str],
        seed: int,
        base_spectrum: Path | None = None,
    ):
        self.roles, self.seed = roles, seed
        self.nf = pd.read_csv(geometry / "noise_floor.tsv", sep="\t")
        self.adapters = pd.read_csv(geometry / "adapters.tsv", sep="\t")
        self.pairwise = _read(eval_dir / "pairwise.tsv") if eval_dir else None
        self.lmc = _read(lmc) if lmc else None
        self.cka = _read(cka) if cka else None
        self.spectrum = _read(base_spectrum / "summary.tsv") if base_spectrum else None

    def label(self, role: str, seed: int | None = None) -> str:
        """The label of the adapter of the method playing ``role`` at ``seed`` (default: the shared-init seed)."""
        if role not in self.roles:
            raise _Missing(f"no method plays {role}")
        return str(Label(self.roles[role], self.seed if seed is None else seed))

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
            raise _Missing(f"no geometry pair {a} / {b}")
        return row.iloc[0]

    def cos(self, ra: str, rb: str) -> float:
        return float(self.pair(self.label(ra), self.label(rb))["value"])

    def same_method(self, role: str, init: str, metric: str = "cosine_global") -> pd.DataFrame:
        """Rows of a method's own pairs: ``init='other'`` (init-seed pairs) or ``'shared'`` (data-order pairs)."""
        if role not in self.roles:
            raise _Missing(f"no method plays {role}")
        m = self.roles[role]
        nf = self.nf[(self.nf["metric"] == metric) & (self.nf["method_a"] == m) & (self.nf["method_b"] == m)]
        nf = nf[(nf["init"] == init) & ((nf["data_order"] == "other") if init == "shared" else True)]
        if nf.empty:
            raise _Missing(f"no {init}-init pair of {m}")
        return nf

    def holm_p(self, a: str, b: str) -> tuple[float, float, float]:
        """(acc_a, acc_b, Holm p) of models ``a``, ``b`` on the first test set."""
        if self.pairwise is None:
            raise _Missing("no eval/pairwise.tsv")
        pw = self.pairwise[self.pairwise["test_set"] == self.pairwise["test_set"].iloc[0]]
        r, swapped = _pair_row(pw, "model_a", "model_b", a, b, f"no McNemar pair {a} / {b}")
        acc = (float(r["acc_b"]), float(r["acc_a"])) if swapped else (float(r["acc_a"]), float(r["acc_b"]))
        return (*acc, float(r["p_holm"]))

    def barrier(self, a: str, b: str, metric: str = "answer_ce") -> tuple[float, float, float]:
        """(value_a, value_b, barrier) of the sweep between ``a`` and ``b`` (either direction)."""
        if self.lmc is None:
            raise _Missing("no lmc/summary.tsv")
        s = self.lmc[self.lmc["metric"] == metric]
        r, swapped = _pair_row(s, "pair_a", "pair_b", a, b, f"no LMC sweep {a} / {b}")
        values = (float(r["value_b"]), float(r["value_a"])) if swapped else (float(r["value_a"]), float(r["value_b"]))
        return (*values, float(r["barrier"]))

    def cka_layers(self, a: str, b: str) -> pd.Series:
        """Linear CKA per layer (index: layer) of models ``a``, ``b``."""
        if self.cka is None:
            raise _Missing("no cka/cka.tsv")
        c = self.cka
        rows = c[((c["model_a"] == a) & (c["model_b"] == b)) | ((c["model_a"] == b) & (c["model_b"] == a))]
        if rows.empty:
            raise _Missing(f"no CKA pair {a} / {b}")
        return rows.set_index("layer")["cka"].sort_index()

    def spectrum_row(self, role: str, statistic: str) -> pd.Series:
        """The ``base_spectrum/summary.tsv`` row of ``statistic`` for the shared-init adapter of ``role``."""
        if self.spectrum is None:
            raise _Missing("no base_spectrum/summary.tsv")
        s = self.spectrum
        row = s[(s["label"] == self.label(role)) & (s["statistic"] == statistic)]
        if row.empty:
            raise _Missing(f"no base-spectrum {statistic} of {self.label(role)}")
        return row.iloc[0]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path is not None and Path(path).exists() else None


# ---- one function per claim: returns (this_run, floor, random, holds) -------------------------


def _cluster(t: RunTables):
    pairs = [("sft", "rft"), ("sft", "rift"), ("rft", "rift")]
    rows = [t.pair(t.label(a), t.label(b)) for a, b in pairs]
    vals = [float(r["value"]) for r in rows]
    others = [t.cos(m, o) for m in ("sft", "rft", "rift") for o in ("dft", "grpo", "dpo") if o in t.roles]
    text = ", ".join(f"{a.upper()}-{b.upper()} {_f(v)}" for (a, b), v in zip(pairs, vals))
    text += f"; largest cluster-to-other {_f(max(others))}" if others else ""
    floor = np.nanmean([float(r["data_floor"]) for r in rows])
    holds = min(vals) >= 0.9 and (not others or min(vals) > max(others))
    return text, f"data-order {_f(floor)}", _f(float(rows[0]["random"])), holds


def _cluster_vs_floor(t: RunTables):
    pairs = [("sft", "rft"), ("sft", "rift"), ("rft", "rift")]
    vals = [t.cos(a, b) for a, b in pairs]
    floors = [float(t.same_method(r, "shared")["value"].mean()) for r in ("sft", "rft", "rift")]
    floor = float(np.mean(floors))
    text = f"smallest cluster cosine {_f(min(vals))}; data-order floors SFT {_f(floors[0])}, RFT {_f(floors[1])}, RIFT {_f(floors[2])}"
    return text, f"data-order {_f(floor)}", "", min(vals) >= floor


def _dft(t: RunTables):
    ds, dr = t.cos("dft", "sft"), t.cos("dft", "rift")
    lo = min(t.cos("sft", "rft"), t.cos("sft", "rift"), t.cos("rft", "rift"))
    row = t.pair(t.label("dft"), t.label("sft"))
    return (
        f"DFT-SFT {_f(ds)}, DFT-RIFT {_f(dr)}; smallest cluster cosine {_f(lo)}",
        f"data-order {_f(row['data_floor'])}",
        _f(row["random"]),
        all(0.25 < v < lo for v in (ds, dr)),
    )


def _dpo_orthogonal(t: RunTables):
    vals = {m: t.cos("dpo", m) for m in ("sft", "rft", "rift")}
    row = t.pair(t.label("dpo"), t.label("sft"))
    return (
        ", ".join(f"DPO-{m.upper()} {_f(v)}" for m, v in vals.items()),
        f"data-order {_f(row['data_floor'])}",
        _f(row["random"]),
        all(abs(v) < 0.2 for v in vals.values()),
    )


def _norm_of(t: RunTables, role: str) -> float:
    row = t.adapters[t.adapters["label"] == t.label(role)]
    if row.empty:
        raise _Missing(f"no adapter {t.label(role)}")
    return float(row["norm"].iloc[0])


def _dpo_norm(t: RunTables):
    s, d = _norm_of(t, "sft"), _norm_of(t, "dpo")
    nr = t.same_method("sft", "shared", "norm_ratio")["value"]
    return (
        f"||dW|| SFT {_f(s)}, DPO {_f(d)}: ratio {_f(s / d)}",
        f"SFT data-order norm ratio {_f(float(nr.mean()))}",
        "",
        s / d >= 5,
    )


def _grpo_between(t: RunTables):
    g = [t.cos("grpo", m) for m in ("sft", "rft", "rift")]
    lo = min(t.cos("sft", "rft"), t.cos("sft", "rift"), t.cos("rft", "rift"))
    d = max(abs(t.cos("dpo", m)) for m in ("sft", "rft", "rift"))
    row = t.pair(t.label("grpo"), t.label("sft"))
    return (
        f"cos(GRPO, SFT/RFT/RIFT) {_f(g[0])}/{_f(g[1])}/{_f(g[2])} (mean {_f(np.mean(g))}); smallest cluster {_f(lo)}; largest |DPO-cluster| {_f(d)}",
        f"data-order {_f(row['data_floor'])}",
        _f(row["random"]),
        d < float(np.mean(g)) < lo,
    )


def _angle_order(t: RunTables):
    paper = ["rft", "rift", "grpo", "dft", "dpo"]
    ang = {m: float(t.pair(t.label("sft"), t.label(m), "top1_angle_left_median")["value"]) for m in paper}
    order = sorted(ang, key=ang.get)
    row = t.pair(t.label("sft"), t.label("rft"), "top1_angle_left_median")
    text = " < ".join(f"{m.upper()} {ang[m]:.1f}" for m in order) + " deg"
    return text, f"data-order {_f(row['data_floor'])} deg (SFT, RFT)", f"{_f(row['random'])} deg", order == paper


def _effective_rank(t: RunTables):
    er = {}
    for m in ROLES:
        row = t.adapters[t.adapters["label"] == t.label(m)]
        if row.empty:
            raise _Missing(f"no adapter {t.label(m)}")
        er[m] = float(row["effective_rank_mean"].iloc[0])
    text = ", ".join(f"{m.upper()} {v:.2f}" for m, v in er.items())
    return text, "", "", max(er, key=er.get) == "dpo"


def _seed_cosine(t: RunTables):
    rows = pd.concat([t.same_method(m, "other") for m in ROLES if m in t.roles])
    v = rows["value"].astype(float)
    shared = [t.cos(a, b) for a, b in (("sft", "rft"), ("sft", "rift"), ("rft", "rift"))]
    return (
        f"init-seed cosines {_f(v.min())} to {_f(v.max())} (shared-init cluster {_f(min(shared))}-{_f(max(shared))})",
        f"init-seed {_f(v.mean())}",
        _f(float(rows["random"].mean())),
        bool(v.max() < 0.5),
    )


def _seed_u1_v1(t: RunTables):
    u = pd.concat([t.same_method(m, "other", "u1_agreement") for m in ROLES if m in t.roles])
    v = pd.concat([t.same_method(m, "other", "v1_agreement") for m in ROLES if m in t.roles])
    um, vm = float(u["value"].mean()), float(v["value"].mean())
    return (
        f"u1 {_f(um)}, v1 {_f(vm)} (mean over init-seed pairs)",
        "",
        f"u1 {_f(float(u['random'].mean()))}, v1 {_f(float(v['random'].mean()))}",
        um > 0.8 and vm < 0.3,
    )


def _rel_barrier(t: RunTables, a: str, b: str) -> tuple[float, str]:
    va, vb, bar = t.barrier(a, b)
    rel = bar / ((va + vb) / 2)
    return rel, f"{a} -> {b}: {_f(va)} -> {_f(vb)}, barrier {_f(bar)} ({100 * rel:.1f}% of endpoints)"


def _seed_lmc(t: RunTables):
    out, rels = [], []
    for m in ROLES:
        if m not in t.roles:
            continue
        for s2 in t.init_seeds(m):
            if s2 == t.seed:
                continue
            try:
                rel, text = _rel_barrier(t, t.label(m), t.label(m, s2))
            except _Missing:
                continue
            rels.append(rel)
            out.append(text)
    if not rels:
        raise _Missing("no same-method seed sweep")
    return "; ".join(out), "", "", max(rels) <= 0.10


def _acc_nll_same(t: RunTables):
    fam = ["sft", "rft", "dft", "rift", "grpo"]
    ps, accs = [], {}
    for i, a in enumerate(fam):
        for b in fam[i + 1 :]:
            acc_a, acc_b, p = t.holm_p(t.label(a), t.label(b))
            accs[a], accs[b] = acc_a, acc_b
            ps.append(p)
    text = ", ".join(f"{m.upper()} {100 * v:.1f}%" for m, v in accs.items()) + f"; smallest Holm p {_f(min(ps))}"
    return text, "", "", min(ps) >= 0.05


def _acc_dpo(t: RunTables):
    a, d, p = t.holm_p(t.label("sft"), t.label("dpo"))
    return f"DPO {100 * d:.1f}% vs SFT {100 * a:.1f}%, Holm p {_f(p)}", "", "", d > a and p < 0.05


def _acc_moves(t: RunTables):
    out, ok = [], True
    for m in ("sft", "rft", "rift"):
        base, acc, p = t.holm_p("base", t.label(m))
        out.append(f"{m.upper()} {100 * acc:.1f}% (Holm p {_f(p)})")
        ok &= p < 0.05
    return f"base {100 * base:.1f}%; " + ", ".join(out), "", "", ok


def _lmc(a: str, b: str, barrier_expected: bool):
    def fn(t: RunTables):
        rel, text = _rel_barrier(t, t.label(a), t.label(b))
        return text, "", "", (rel > 0.10) if barrier_expected else (rel <= 0.10)

    return fn


def _cka_pattern(t: RunTables):
    sr = t.cka_layers(t.label("sft"), t.label("rift"))
    sg = t.cka_layers(t.label("sft"), t.label("grpo"))
    gd = t.cka_layers(t.label("grpo"), t.label("dpo"))
    dd = t.cka_layers(t.label("dft"), t.label("dpo"))
    last = int(sr.index.max())
    low = max(gd.loc[last], dd.loc[last])
    text = (
        f"SFT-RIFT min {sr.min():.4f}; last layer ({last}): SFT-GRPO {sg.loc[last]:.4f}, "
        f"GRPO-DPO {gd.loc[last]:.4f}, DFT-DPO {dd.loc[last]:.4f}"
    )
    return text, "", "", sr.min() > sg.loc[last] > low


def _vs_sft(t: RunTables, role: str) -> tuple[float, float, float, pd.Series]:
    """(cosine, orthogonal fraction, norm ratio ||dW_role|| / ||dW_SFT||, the cosine's noise-floor row)
    of ``role`` against SFT at the shared-init seed, all from ``geometry/noise_floor.tsv``."""
    a, b = t.label("sft"), t.label(role)
    row = t.pair(a, b)
    ortho = float(t.pair(a, b, "orthogonal_fraction_global")["value"])
    nr = t.pair(a, b, "norm_ratio")
    ratio = float(nr["value"]) if nr["pair_a"] == a else 1.0 / float(nr["value"])  # ||dW_b|| / ||dW_a|| of its row
    if not np.isfinite(float(row["value"])):  # a zero update (e.g. online GRPO without a rewarded sample)
        raise _Missing(f"cosine of {b} to {a} is undefined (||dW|| ratio {_f(ratio)}: a zero update)")
    return float(row["value"]), ortho, ratio, row


def _lr10x(t: RunTables):
    cos, _, ratio, row = _vs_sft(t, "lr10x")
    return (
        f"cos(SFT 10x LR, SFT) {_f(cos)}; ||dW|| ratio {_f(ratio)}",
        f"data-order {_f(row['data_floor'])}",
        _f(row["random"]),
        cos >= 0.3 and ratio >= 1.5,
    )


def _online_grpo(t: RunTables):
    cos, ortho, ratio, row = _vs_sft(t, "online_grpo")
    return (
        f"cos(online GRPO, SFT) {_f(cos)}, orthogonal fraction {_f(ortho)}, ||dW|| ratio {_f(ratio)}",
        f"data-order {_f(row['data_floor'])}",
        _f(row["random"]),
        abs(cos) < 0.2 and ratio < 1.0,
    )


def _intruders(t: RunTables):
    rows = {m: t.spectrum_row(m, "intruders") for m in ("sft", "rft", "rift")}
    text = ", ".join(f"{m.upper()} {int(r['value'])}" for m, r in rows.items())
    text += f" intruder dimensions (top-k of W + dW, summed over {int(rows['sft']['n_modules'])} modules)"
    floor = "data-order " + ", ".join(f"{m.upper()} {_f(r['data_floor'])}" for m, r in rows.items())
    chance = "chance " + ", ".join(f"{m.upper()} {int(r['chance'])}" for m, r in rows.items())
    return text, floor, chance, all(r["value"] >= 1 for r in rows.values())


SPECTRUM_NAMES = {
    "rotation_left_deg": "top-k output-subspace rotation (deg)",
    "sv_change": "top-k singular-value change",
}


def _below_sft(t: RunTables, statistic: str, ratio: bool):
    """(text, floor, chance, holds): GRPO's and DPO's ``statistic`` (or its ratio to chance) each below SFT's
    by more than the larger of the two methods' data-order floors (and, for a ratio, below 1)."""
    col, floor_col = ("ratio_to_chance", "ratio_data_floor") if ratio else ("value", "data_floor")
    rows = {m: t.spectrum_row(m, statistic) for m in ("sft", "grpo", "dpo")}
    sft = float(rows["sft"][col])
    holds, parts, floors = True, [], []
    for m in ("grpo", "dpo"):
        v = float(rows[m][col])
        floor = np.nanmax([float(rows["sft"][floor_col]), float(rows[m][floor_col])])
        floors.append(f"SFT/{m.upper()} {_f(floor)}")
        holds &= bool(np.isfinite(v) and np.isfinite(sft) and sft - v > (floor if np.isfinite(floor) else 0.0))
        holds &= (v < 1.0) if ratio else True
        parts.append(f"{m.upper()} {_f(v)}")
    what = SPECTRUM_NAMES[statistic] + (", ratio to chance" if ratio else "")
    text = f"{what}: SFT {_f(sft)}, " + ", ".join(parts)
    if ratio:
        text += (
            " ("
            + ", ".join(
                f"{m.upper()} {_f(float(r['value']))} vs chance {_f(float(r['chance']))}" for m, r in rows.items()
            )
            + ")"
        )
    chance = "1" if ratio else "chance " + ", ".join(f"{m.upper()} {_f(float(r['chance']))}" for m, r in rows.items())
    return text, "data-order " + ", ".join(floors), chance, holds


CHECKS = {
    "cluster": _cluster,
    "cluster_vs_floor": _cluster_vs_floor,
    "dft": _dft,
    "dpo_orthogonal": _dpo_orthogonal,
    "dpo_norm": _dpo_norm,
    "grpo_between": _grpo_between,
    "angle_order": _angle_order,
    "effective_rank": _effective_rank,
    "seed_cosine": _seed_cosine,
    "seed_u1_v1": _seed_u1_v1,
    "seed_lmc": _seed_lmc,
    "acc_nll_same": _acc_nll_same,
    "acc_dpo": _acc_dpo,
    "acc_moves": _acc_moves,
    "lmc_sft_grpo": _lmc("sft", "grpo", False),
    "lmc_grpo_rift": _lmc("grpo", "rift", False),
    "lmc_rift_dpo": _lmc("rift", "dpo", True),
    "cka_pattern": _cka_pattern,
    "lr10x": _lr10x,
    "online_grpo": _online_grpo,
    "intruders": _intruders,
    "rl_rotation": lambda t: _below_sft(t, "rotation_left_deg", ratio=False),
    "rl_rotation_chance": lambda t: _below_sft(t, "rotation_left_deg", ratio=True),
    "rl_spectrum": lambda t: _below_sft(t, "sv_change", ratio=False),
}

OUTPUT_COLUMNS = ["claim_id", "group", "source", "claim", "paper", "this_run", "floor", "random", "verdict", "rule"]


def check_claims(tables: RunTables) -> pd.DataFrame:
    """One row per claim of :func:`.paper.paper_claims`, in its order (columns: :data:`OUTPUT_COLUMNS`)."""
    rows = []
    for claim in paper_claims().itertuples(index=False):
        fn = CHECKS.get(claim.claim_id)
        if fn is None:
            raise ValueError(f"paper_claims.tsv: claim {claim.claim_id!r} has no check in lossgeom.claims.check")
        try:
            this_run, floor, rnd, holds = fn(tables)
            verdict = "holds" if holds else "fails"
        except _Missing as e:
            this_run, floor, rnd, verdict = f"({e})", "", "", NOT_RUN
        rows.append(
            {
                "claim_id": claim.claim_id,
                "group": claim.group,
                "source": claim.source,
                "claim": claim.claim,
                "paper": claim.paper,
                "this_run": this_run,
                "floor": floor,
                "random": rnd,
                "verdict": verdict,
                "rule": claim.rule,
            }
        )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def write_claims(
    geometry: Path,
    eval_dir: Path | None,
    lmc: Path | None,
    cka: Path | None,
    roles: dict[str, str],
    seed: int,
    out: Path,
    base_spectrum: Path | None = None,
) -> pd.DataFrame:
    """Compute the claims table from the run's tables and write it to ``out`` (tab-separated)."""
    bad = sorted(set(roles) - set(ROLES) - set(EXTRA_ROLES))
    if bad:
        raise ValueError(f"claims: unknown role {bad[0]!r}; roles are {list(ROLES + EXTRA_ROLES)}")
    df = check_claims(
        RunTables(
            Path(geometry),
            eval_dir and Path(eval_dir),
            lmc and Path(lmc),
            cka and Path(cka),
            roles,
            seed,
            base_spectrum and Path(base_spectrum),
        )
    )
    write_table(df, out)
    return df
