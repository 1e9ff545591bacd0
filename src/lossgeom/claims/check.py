"""This run's number, floor and verdict for each claim of the paper (``results/claims.tsv``).

Inputs are the tables the other stages wrote: ``geometry/noise_floor.tsv`` (pairwise values with
their floors and random levels), ``geometry/adapters.tsv`` (norms, effective ranks),
``eval/pairwise.tsv`` (exact McNemar with Holm), ``lmc/summary.tsv`` (barriers),
``cka/cka.tsv``, ``base_spectrum/summary.tsv`` (intruder dimensions, rotation and singular-value
change of each delta against the base, with chance levels and floors) and ``behaviour/`` (``kl.tsv``,
``forgetting.tsv``, ``forgetting_vs_kl.tsv``). ``roles`` maps the paper's six methods (``sft rft dft rift grpo dpo``) and its two
extra runs (``lr10x``: SFT at 10x the learning rate; ``online_grpo``) to this study's method names; ``seed`` is the seed whose adapters share a LoRA init (cross-method values
at that seed are compared with the data-order floor, cross-seed values with the init-seed floor).

Each claim is checked on every replicate of the run that has its inputs: the shared-init seed's adapters,
its data-order replicate's and the other init seeds' (cross-method values of a replicate are pairs at that
replicate's shared init). Each check follows the claim's ``rule`` (``paper_claims.tsv``), fixed in code
below, never tuned per run, and returns every condition's margin; the verdict over the replicates is
``holds`` or ``fails`` only when they agree by more than they spread, else ``fragile``, ``inconclusive``
with one replicate, or ``not run`` when no replicate has the inputs (:mod:`.verdicts`). Numbers are
rounded to 3 significant digits in text. Output columns: :data:`OUTPUT_COLUMNS` (``this_run``, ``floor``,
``random``: over the replicates, each number as its range, or each replicate's text where their words
differ; ``random``: the random level, or the chance level of a base-spectrum statistic; ``replicates``: how
many hold; ``margins``: each replicate's margin per condition and their spread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PAPER_ROLES
from ..errors import InputError
from ..fsutil import atomic_files, write_table, write_text
from .anchors import ANCHOR_CHECKS
from .page import claims_html
from .paper import paper_claims
from .tables import Missing, RunTables, fmt
from .verdicts import Judged, ranges_text, replicates_text, verdict

ROLES = tuple(PAPER_ROLES)  # the paper's six methods, named where the config maps them to losses
EXTRA_ROLES = ("lr10x", "online_grpo")  # the paper's extra runs: checked against SFT, not part of the six


# ---- one function per claim: returns Judged(this_run, floor, random, margins) -------------------------
# Each margin is signed, positive where its condition of the rule is met, in that condition's units
# (lossgeom.claims.verdicts); the conditions are named as the rule (paper_claims.tsv) states them.

CLUSTER = (("sft", "rft"), ("sft", "rift"), ("rft", "rift"))


def _cluster_cosines(t: RunTables) -> list[float]:
    return [t.cos(a, b) for a, b in CLUSTER]


def _cluster(t: RunTables):
    rows = [t.pair(t.label(a), t.label(b)) for a, b in CLUSTER]
    vals = [float(r["value"]) for r in rows]
    others = [t.cos(m, o) for m in ("sft", "rft", "rift") for o in ("dft", "grpo", "dpo") if o in t.roles]
    text = ", ".join(f"{a.upper()}-{b.upper()} {fmt(v)}" for (a, b), v in zip(CLUSTER, vals))
    text += f"; largest cluster-to-other {fmt(max(others))}" if others else ""
    floor = np.nanmean([float(r["data_floor"]) for r in rows])
    margins = {"every pair >= 0.9": min(vals) - 0.9}
    if others:
        margins["above every cluster-to-other"] = min(vals) - max(others)
    return Judged(text, f"data-order {fmt(floor)}", fmt(float(rows[0]["random"])), margins)


def _cluster_vs_floor(t: RunTables):
    vals = _cluster_cosines(t)
    floors = [float(t.same_method(r, "shared")["value"].mean()) for r in ("sft", "rft", "rift")]
    floor = float(np.mean(floors))
    text = f"smallest cluster cosine {fmt(min(vals))}; data-order floors SFT {fmt(floors[0])}, RFT {fmt(floors[1])}, RIFT {fmt(floors[2])}"
    return Judged(text, f"data-order {fmt(floor)}", "", {"smallest >= mean floor": min(vals) - floor})


def _dft(t: RunTables):
    ds, dr = t.cos("dft", "sft"), t.cos("dft", "rift")
    lo = min(_cluster_cosines(t))
    row = t.pair(t.label("dft"), t.label("sft"))
    return Judged(
        f"DFT-SFT {fmt(ds)}, DFT-RIFT {fmt(dr)}; smallest cluster cosine {fmt(lo)}",
        f"data-order {fmt(row['data_floor'])}",
        fmt(row["random"]),
        {"> 0.25": min(ds, dr) - 0.25, "< smallest cluster cosine": lo - max(ds, dr)},
    )


def _dpo_orthogonal(t: RunTables):
    vals = {m: t.cos("dpo", m) for m in ("sft", "rft", "rift")}
    row = t.pair(t.label("dpo"), t.label("sft"))
    return Judged(
        ", ".join(f"DPO-{m.upper()} {fmt(v)}" for m, v in vals.items()),
        f"data-order {fmt(row['data_floor'])}",
        fmt(row["random"]),
        {"|cos| < 0.2": 0.2 - max(abs(v) for v in vals.values())},
    )


def _norm_of(t: RunTables, role: str) -> float:
    row = t.adapters[t.adapters["label"] == t.label(role)]
    if row.empty:
        raise Missing(f"no adapter {t.label(role)}")
    return float(row["norm"].iloc[0])


def _dpo_norm(t: RunTables):
    s, d = _norm_of(t, "sft"), _norm_of(t, "dpo")
    nr = t.same_method("sft", "shared", "norm_ratio")["value"]
    return Judged(
        f"||dW|| SFT {fmt(s)}, DPO {fmt(d)}: ratio {fmt(s / d)}",
        f"SFT data-order norm ratio {fmt(float(nr.mean()))}",
        "",
        {"ratio >= 5": s / d - 5},
    )


def _grpo_between(t: RunTables):
    g = [t.cos("grpo", m) for m in ("sft", "rft", "rift")]
    lo = min(_cluster_cosines(t))
    d = max(abs(t.cos("dpo", m)) for m in ("sft", "rft", "rift"))
    row = t.pair(t.label("grpo"), t.label("sft"))
    return Judged(
        f"cos(GRPO, SFT/RFT/RIFT) {fmt(g[0])}/{fmt(g[1])}/{fmt(g[2])} (mean {fmt(np.mean(g))}); smallest cluster {fmt(lo)}; largest |DPO-cluster| {fmt(d)}",
        f"data-order {fmt(row['data_floor'])}",
        fmt(row["random"]),
        {"below the cluster": lo - float(np.mean(g)), "above DPO": float(np.mean(g)) - d},
    )


def _angle_order(t: RunTables):
    paper = ["rft", "rift", "grpo", "dft", "dpo"]
    ang = {m: float(t.pair(t.label("sft"), t.label(m), "top1_angle_left_median")["value"]) for m in paper}
    order = sorted(ang, key=ang.get)
    row = t.pair(t.label("sft"), t.label("rft"), "top1_angle_left_median")
    text = " < ".join(f"{m.upper()} {ang[m]:.1f}" for m in order) + " deg"
    # each consecutive pair of the paper's order is a condition: its angle gap (deg), positive when in order
    margins = {f"{a.upper()} < {b.upper()}": ang[b] - ang[a] for a, b in zip(paper, paper[1:])}
    return Judged(text, f"data-order {fmt(row['data_floor'])} deg (SFT, RFT)", f"{fmt(row['random'])} deg", margins)


def _effective_rank(t: RunTables):
    er = {}
    for m in ROLES:
        row = t.adapters[t.adapters["label"] == t.label(m)]
        if row.empty:
            raise Missing(f"no adapter {t.label(m)}")
        er[m] = float(row["effective_rank_mean"].iloc[0])
    text = ", ".join(f"{m.upper()} {v:.2f}" for m, v in er.items())
    return Judged(text, "", "", {"DPO's the largest": er["dpo"] - max(v for m, v in er.items() if m != "dpo")})


def _seed_pairs_side(t: RunTables) -> None:
    """Seed claims read each init-seed pair from its shared-init side: another init seed's replicate would
    read the same pairs again."""
    if t.replicate[0] != t.seed:
        raise Missing(f"seed pairs are read from seed {t.seed}'s side")


def _seed_cosine(t: RunTables):
    _seed_pairs_side(t)
    rows = pd.concat([t.same_method(m, "other") for m in ROLES if m in t.roles])
    v = rows["value"].astype(float)
    shared = _cluster_cosines(t)
    return Judged(
        f"init-seed cosines {fmt(v.min())} to {fmt(v.max())} (shared-init cluster {fmt(min(shared))}-{fmt(max(shared))})",
        f"init-seed {fmt(v.mean())}",
        fmt(float(rows["random"].mean())),
        {"every one < 0.5": 0.5 - float(v.max())},
    )


def _seed_u1_v1(t: RunTables):
    _seed_pairs_side(t)
    u = pd.concat([t.same_method(m, "other", "u1_agreement") for m in ROLES if m in t.roles])
    v = pd.concat([t.same_method(m, "other", "v1_agreement") for m in ROLES if m in t.roles])
    um, vm = float(u["value"].mean()), float(v["value"].mean())
    return Judged(
        f"u1 {fmt(um)}, v1 {fmt(vm)} (mean over init-seed pairs)",
        "",
        f"u1 {fmt(float(u['random'].mean()))}, v1 {fmt(float(v['random'].mean()))}",
        {"u1 > 0.8": um - 0.8, "v1 < 0.3": 0.3 - vm},
    )


def _rel_barrier(t: RunTables, a: str, b: str) -> tuple[float, str]:
    va, vb, bar = t.barrier(a, b)
    rel = bar / ((va + vb) / 2)
    return rel, f"{a} -> {b}: {fmt(va)} -> {fmt(vb)}, barrier {fmt(bar)} ({100 * rel:.1f}% of endpoints)"


def _seed_lmc(t: RunTables):
    _seed_pairs_side(t)
    out, rels = [], []
    for m in ROLES:
        if m not in t.roles:
            continue
        for s2 in t.init_seeds(m):
            if s2 == t.seed:
                continue
            try:
                rel, text = _rel_barrier(t, t.label(m), t.label(m, s2))
            except Missing:
                continue
            rels.append(rel)
            out.append(text)
    if not rels:
        raise Missing("no same-method seed sweep")
    return Judged("; ".join(out), "", "", {"every barrier <= 10%": 0.10 - max(rels)})


def _log_p_margin(p: float) -> float:
    """How far a p-value is below 0.05, in decades (log10(0.05 / p)): positive when p < 0.05."""
    return float(np.log10(0.05 / max(p, 1e-300)))


def _acc_nll_same(t: RunTables):
    fam = ["sft", "rft", "dft", "rift", "grpo"]
    ps, accs = [], {}
    for i, a in enumerate(fam):
        for b in fam[i + 1 :]:
            acc_a, acc_b, p = t.holm_p(t.label(a), t.label(b))
            accs[a], accs[b] = acc_a, acc_b
            ps.append(p)
    text = ", ".join(f"{m.upper()} {100 * v:.1f}%" for m, v in accs.items()) + f"; smallest Holm p {fmt(min(ps))}"
    return Judged(text, "", "", {"every Holm p >= 0.05 (log10 p/0.05)": -_log_p_margin(min(ps))})


def _acc_dpo(t: RunTables):
    a, d, p = t.holm_p(t.label("sft"), t.label("dpo"))
    return Judged(
        f"DPO {100 * d:.1f}% vs SFT {100 * a:.1f}%, Holm p {fmt(p)}",
        "",
        "",
        {"DPO above SFT (pass@1)": d - a, "Holm p < 0.05 (log10 0.05/p)": _log_p_margin(p)},
    )


def _acc_moves(t: RunTables):
    out, margins = [], []
    for m in ("sft", "rft", "rift"):
        base, acc, p = t.holm_p("base", t.label(m))
        out.append(f"{m.upper()} {100 * acc:.1f}% (Holm p {fmt(p)})")
        margins.append(_log_p_margin(p))
    return Judged(
        f"base {100 * base:.1f}%; " + ", ".join(out), "", "", {"every Holm p < 0.05 (log10 0.05/p)": min(margins)}
    )


def _lmc(a: str, b: str, barrier_expected: bool):
    def fn(t: RunTables):
        rel, text = _rel_barrier(t, t.label(a), t.label(b))
        if barrier_expected:
            return Judged(text, "", "", {"barrier > 10%": rel - 0.10})
        return Judged(text, "", "", {"barrier <= 10%": 0.10 - rel})

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
    margins = {
        "SFT-RIFT min > SFT-GRPO last": sr.min() - sg.loc[last],
        "SFT-GRPO > the DPO pairs, last": sg.loc[last] - low,
    }
    return Judged(text, "", "", {k: float(v) for k, v in margins.items()})


def _vs_sft(t: RunTables, role: str) -> tuple[float, float, float, pd.Series]:
    """(cosine, orthogonal fraction, norm ratio ||dW_role|| / ||dW_SFT||, the cosine's noise-floor row)
    of ``role`` against SFT at the shared-init seed, all from ``geometry/noise_floor.tsv``."""
    a, b = t.label("sft"), t.label(role)
    row = t.pair(a, b)
    ortho = float(t.pair(a, b, "orthogonal_fraction_global")["value"])
    nr = t.pair(a, b, "norm_ratio")
    ratio = float(nr["value"]) if nr["pair_a"] == a else 1.0 / float(nr["value"])  # ||dW_b|| / ||dW_a|| of its row
    if not np.isfinite(float(row["value"])):  # a zero update (e.g. online GRPO without a rewarded sample)
        raise Missing(f"cosine of {b} to {a} is undefined (||dW|| ratio {fmt(ratio)}: a zero update)")
    return float(row["value"]), ortho, ratio, row


def _lr10x(t: RunTables):
    cos, _, ratio, row = _vs_sft(t, "lr10x")
    return Judged(
        f"cos(SFT 10x LR, SFT) {fmt(cos)}; ||dW|| ratio {fmt(ratio)}",
        f"data-order {fmt(row['data_floor'])}",
        fmt(row["random"]),
        {"cos >= 0.3": cos - 0.3, "norm ratio >= 1.5": ratio - 1.5},
    )


def _online_grpo(t: RunTables):
    cos, ortho, ratio, row = _vs_sft(t, "online_grpo")
    return Judged(
        f"cos(online GRPO, SFT) {fmt(cos)}, orthogonal fraction {fmt(ortho)}, ||dW|| ratio {fmt(ratio)}",
        f"data-order {fmt(row['data_floor'])}",
        fmt(row["random"]),
        {"|cos| < 0.2": 0.2 - abs(cos), "norm ratio < 1": 1.0 - ratio},
    )


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
    **ANCHOR_CHECKS,
}

OUTPUT_COLUMNS = [
    "claim_id",
    "group",
    "source",
    "claim",
    "paper",
    "this_run",
    "floor",
    "random",
    "verdict",
    "replicates",
    "margins",
    "rule",
]


TEXTS = ("this_run", "floor", "random")  # each given as its range over the replicates (verdicts.ranges_text)


def judge_claim(fn, tables: RunTables) -> tuple[dict[str, Judged], str]:
    """The claim's check on every replicate of the run that has its inputs (name -> :class:`Judged`), and
    the first replicate's reason for skipping when none has them."""
    judged, missing = {}, ""
    for replicate in tables.replicates():
        try:
            judged[replicate] = fn(tables.at(replicate))
        except Missing as e:
            missing = missing or str(e)
    return judged, missing


def check_claims(tables: RunTables) -> pd.DataFrame:
    """One row per claim of :func:`.paper.paper_claims`, in its order (columns: :data:`OUTPUT_COLUMNS`): its
    texts over every replicate that has the claim's inputs (each number as its range, :func:`.verdicts.ranges_text`),
    the verdict over them (:func:`.verdicts.verdict`) and each replicate's margins."""
    rows = []
    for claim in paper_claims().itertuples(index=False):
        fn = CHECKS.get(claim.claim_id)
        if fn is None:
            raise ValueError(f"paper_claims.tsv: claim {claim.claim_id!r} has no check in lossgeom.claims.check")
        judged, missing = judge_claim(fn, tables)
        texts = {field: ranges_text({r: getattr(j, field) for r, j in judged.items()}) for field in TEXTS}
        counted, margins = replicates_text(judged)
        rows.append(
            {
                "claim_id": claim.claim_id,
                "group": claim.group,
                "source": claim.source,
                "claim": claim.claim,
                "paper": claim.paper,
                **(texts if judged else {"this_run": f"({missing})", "floor": "", "random": ""}),
                "verdict": verdict(judged),
                "replicates": counted if judged else "",
                "margins": margins,
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
    behaviour: Path | None = None,
    html: Path | None = None,
) -> pd.DataFrame:
    """Compute the claims table from the run's tables and write it to ``out`` (tab-separated), and as the
    report's page to ``html`` where given (:func:`.page.claims_html`; both or neither)."""
    bad = sorted(set(roles) - set(ROLES) - set(EXTRA_ROLES))
    if bad:
        raise InputError(f"claims: unknown role {bad[0]!r}; roles are {list(ROLES + EXTRA_ROLES)}")
    df = check_claims(
        RunTables(
            Path(geometry),
            eval_dir and Path(eval_dir),
            lmc and Path(lmc),
            cka and Path(cka),
            roles,
            seed,
            base_spectrum and Path(base_spectrum),
            behaviour and Path(behaviour),
        )
    )
    with atomic_files() as stage:
        write_table(df, stage(out))
        if html is not None:
            write_text(stage(html), claims_html(df))
    return df
