"""The claims checked against a run, the paper's and those of the papers it is set against, read from one data file.

``paper_claims.tsv`` (beside this module; tab-separated, one row per claim) has columns
``claim_id`` (stable key), ``group`` (geometry, seeds, accuracy, connectivity, representations, lr,
online, base spectrum), ``source`` (whose claim: the study reproduced, Nikolich et al. 2026, or another
paper the study is set against), ``claim`` (the claim in words; a question for the other papers'), ``paper``
(that paper's numbers or finding as reported, text) and ``rule`` (how :mod:`.check` decides the verdict,
in words). Nothing else holds the papers' numbers.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ["claim_id", "group", "source", "claim", "paper", "rule"]


def paper_claims() -> pd.DataFrame:
    """The claims table of the paper, in file order; raises ``ValueError`` if the file is malformed."""
    with resources.files(__package__).joinpath("paper_claims.tsv").open() as f:
        df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"paper_claims.tsv: columns {list(df.columns)}, expected {COLUMNS}")
    if df["claim_id"].duplicated().any():
        raise ValueError(
            f"paper_claims.tsv: duplicate claim_id {df.loc[df['claim_id'].duplicated(), 'claim_id'].iloc[0]!r}"
        )
    return df
