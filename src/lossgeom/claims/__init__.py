"""Stage ``workflow/rules/claims.smk``: the paper's headline claims, checked against this run.

:mod:`.paper` reads the paper's numbers from one data file (``paper_claims.tsv`` beside this
module, with the claims of the other papers it is set against); :mod:`.tables` reads the tables the
other stages wrote; :mod:`.check` (the paper's claims) and :mod:`.anchors` (the other papers') compute
this run's number, the matching floor and a verdict for each claim, and :mod:`.check` writes
``results/claims.tsv`` (``lossgeom claims``).
"""
