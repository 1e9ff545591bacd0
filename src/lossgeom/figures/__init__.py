"""Figures, one module per analysis and one figure rule per module: :mod:`.geometry` (rule
``geometry_figures``), :mod:`.accuracy` (``accuracy_figures``), :mod:`.connectivity`
(``connectivity_figures``), :mod:`.representations` (``representations_figures``) and :mod:`.training`
(``training_figures``), with the canvas, style, colours and atomic saving of :mod:`.common`.

Pure functions from tidy DataFrames (the tables under ``results/``) to ``results/figures/*.png``
and ``.pdf`` (Agg backend, no pyplot state). Each figure rule tracks its module and :mod:`.common` as
inputs, so editing one reruns only the figures that import it (workflow/rules/common.smk).
"""
