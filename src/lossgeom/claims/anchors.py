"""Checks of what other papers claim of fine-tuning updates, on this study's adapters: each delta against
the base weight's spectrum (``base_spectrum/summary.tsv``). Shuttleworth et al. (2024): LoRA puts intruder
dimensions into the base's top singular vectors; "The Path Not Taken" (2025): RL-style updates rotate the
base's principal subspace and change its top singular values less than SFT. And each model's behaviour
against the base (``behaviour/``): RL's Razor (Shenfeld et al., 2025): forgetting tracks the forward KL to
the base, and online RL forgets less than SFT. Each returns a :class:`~.verdicts.Judged` (this_run, floor,
chance, each condition's margin), as the checks of :mod:`.check`."""

from __future__ import annotations

import numpy as np

from .tables import Missing, RunTables, fmt
from .verdicts import Judged


def _intruders(t: RunTables):
    rows = {m: t.spectrum_row(m, "intruders") for m in ("sft", "rft", "rift")}
    text = ", ".join(f"{m.upper()} {int(r['value'])}" for m, r in rows.items())
    text += f" intruder dimensions (top-k of W + dW, summed over {int(rows['sft']['n_modules'])} modules)"
    floor = "data-order " + ", ".join(f"{m.upper()} {fmt(r['data_floor'])}" for m, r in rows.items())
    chance = "chance " + ", ".join(f"{m.upper()} {int(r['chance'])}" for m, r in rows.items())
    # counts: the threshold "at least 1" lies between 0 and 1, so a count's margin is its distance to 0.5
    return Judged(text, floor, chance, {"each >= 1": min(float(r["value"]) for r in rows.values()) - 0.5})


SPECTRUM_NAMES = {
    "rotation_left_deg": "top-k output-subspace rotation (deg)",
    "sv_change": "top-k singular-value change",
}


def _below_sft(t: RunTables, statistic: str, ratio: bool):
    """GRPO's and DPO's ``statistic`` (or its ratio to chance) each below SFT's by more than the larger of the
    two methods' data-order floors (and, for a ratio, below 1): one margin per method and condition."""
    col, floor_col = ("ratio_to_chance", "ratio_data_floor") if ratio else ("value", "data_floor")
    rows = {m: t.spectrum_row(m, statistic) for m in ("sft", "grpo", "dpo")}
    sft = float(rows["sft"][col])
    margins, parts, floors = {}, [], []
    for m in ("grpo", "dpo"):
        v = float(rows[m][col])
        floor = np.nanmax([float(rows["sft"][floor_col]), float(rows[m][floor_col])])
        floors.append(f"SFT/{m.upper()} {fmt(floor)}")
        margins[f"{m.upper()} below SFT by > floor"] = sft - v - (floor if np.isfinite(floor) else 0.0)
        if ratio:
            margins[f"{m.upper()} < 1"] = 1.0 - v
        parts.append(f"{m.upper()} {fmt(v)}")
    what = SPECTRUM_NAMES[statistic] + (", ratio to chance" if ratio else "")
    text = f"{what}: SFT {fmt(sft)}, " + ", ".join(parts)
    if ratio:
        text += (
            " ("
            + ", ".join(
                f"{m.upper()} {fmt(float(r['value']))} vs chance {fmt(float(r['chance']))}" for m, r in rows.items()
            )
            + ")"
        )
    chance = "1" if ratio else "chance " + ", ".join(f"{m.upper()} {fmt(float(r['chance']))}" for m, r in rows.items())
    return Judged(text, "data-order " + ", ".join(floors), chance, margins)


def _forgetting_tracks_kl(t: RunTables):
    c = t.behaviour_table("forgetting_vs_kl").set_index("predictor")
    if "kl_forward_token" not in c.index:
        raise Missing("no kl_forward_token row in behaviour/forgetting_vs_kl.tsv")
    r = c.loc["kl_forward_token"]
    text = f"Spearman rho {fmt(r['rho'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] over {int(r['n'])} adapters"
    if "delta_norm" in c.index:
        n = c.loc["delta_norm"]
        text += f"; against ||dW||: {fmt(n['rho'])} [{fmt(n['ci_low'])}, {fmt(n['ci_high'])}]"
    if t.replicate[0] != t.seed or t.replicate[1] is not None:
        raise Missing("one correlation over every adapter: read once")
    return Judged(text, "95% interval", "0", {"95% interval above 0": float(r["ci_low"])}, interval=True)


def _online_rl_forgets_less(t: RunTables):
    sft, online = t.label("sft"), t.label("online_grpo")
    f_sft, f_on = t.behaviour_row("forgetting", sft), t.behaviour_row("forgetting", online)
    k_sft = t.behaviour_row("kl", sft, direction="forward", unit="token")
    k_on = t.behaviour_row("kl", online, direction="forward", unit="token")
    ff, kf = float(f_sft["seed_floor"]), float(k_sft["seed_floor"])
    text = (
        f"forgetting: online GRPO {fmt(f_on['value'])}, SFT {fmt(f_sft['value'])} nats/token; forward KL: "
        f"online GRPO {fmt(k_on['value'])}, SFT {fmt(k_sft['value'])} nats/token"
    )
    margins = {
        f"{what} below SFT's by > SFT's seed floor": float(s["value"]) - float(o["value"]) - floor
        for what, s, o, floor in (("forgetting", f_sft, f_on, ff), ("forward KL", k_sft, k_on, kf))
    }
    return Judged(text, f"seed floor of SFT: forgetting {fmt(ff)}, KL {fmt(kf)}", "0", margins)


ANCHOR_CHECKS = {
    "intruders": _intruders,
    "rl_rotation": lambda t: _below_sft(t, "rotation_left_deg", ratio=False),
    "rl_rotation_chance": lambda t: _below_sft(t, "rotation_left_deg", ratio=True),
    "rl_spectrum": lambda t: _below_sft(t, "sv_change", ratio=False),
    "forgetting_tracks_kl": _forgetting_tracks_kl,
    "online_rl_forgets_less": _online_rl_forgets_less,
}
