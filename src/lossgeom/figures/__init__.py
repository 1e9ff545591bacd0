"""Figure writers: pure functions from tidy DataFrames to .png/.pdf files (Agg backend, no pyplot state)."""
