"""Stage ``workflow/rules/claims.smk``: the paper's headline claims, checked against this run.

:mod:`.paper` reads the paper's numbers from one data file (``paper_claims.tsv`` beside this
module); :mod:`.check` computes this run's number, the matching floor and a verdict for each claim
from the tables the other stages wrote, and writes ``results/claims.tsv`` (``lossgeom claims``).
"""
