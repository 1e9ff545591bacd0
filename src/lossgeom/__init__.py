"""lossgeom: weight-space geometry of offline reasoning-training losses.

The package holds every piece of logic of the study; the Snakemake rules under workflow/ only wire
files to subcommands of the ``lossgeom`` command-line tool (``lossgeom.cli``).
"""

__version__ = "0.1.0"
