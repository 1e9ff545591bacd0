"""Figures of the geometry and behaviour stages (rules ``geometry_figures`` and ``behaviour_figures``).

Pure functions from tidy DataFrames (the tables under ``results/``) to ``results/figures/*.png``
and ``.pdf`` (Agg backend, no pyplot state): :mod:`.geometry`, :mod:`.behaviour`, with the canvas,
style and atomic saving of :mod:`.common`.
"""
