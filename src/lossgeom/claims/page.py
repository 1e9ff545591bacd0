"""The claims table as the report's first page (``results/claims.html``): the verdicts over replicates first,
counted, then every claim with its verdict, how many replicates hold, the paper's number and this run's
(each number's range over the replicates), the floor and the random level."""

from __future__ import annotations

from html import escape

import pandas as pd

from .verdicts import VERDICTS

COLOURS = {"holds": "#d9f2d9", "fails": "#f8d7d7", "fragile": "#fff1c2", "inconclusive": "#e8e8e8", "not run": "#fff"}
SHOWN = ["claim_id", "verdict", "replicates", "paper", "this_run", "floor", "random"]


def claims_html(df: pd.DataFrame) -> str:
    """A standalone HTML page of a claims table (:data:`lossgeom.claims.check.OUTPUT_COLUMNS`)."""
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in SHOWN)
    body = []
    for _, row in df.iterrows():
        colour = COLOURS.get(row["verdict"], "#fff")
        cells = "".join(
            f'<td style="background:{colour}"><b>{escape(str(row[c]))}</b></td>'
            if c == "verdict"
            else f'<td title="{escape(str(row["rule"]))}">{escape(str(row[c]))}</td>'
            for c in SHOWN
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Claims</title><style>'
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#eee}"
        "</style></head><body>"
        f"<h3>The paper's claims over this run's replicates: {escape(summary)}</h3>"
        "<p>Each claim is checked on every replicate (the shared-init seed, its data-order replicate, the other "
        "init seed). <b>holds</b> / <b>fails</b>: every replicate agrees, each by more than the replicates "
        "spread; <b>fragile</b>: they disagree or agree by less (another machine may flip it); "
        "<b>inconclusive</b>: one replicate. Numbers are ranges over the replicates; each row's rule is its "
        "tooltip, its margins per replicate are in <tt>claims.tsv</tt>.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>\n"
    )
