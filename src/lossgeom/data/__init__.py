"""Shared data of every stage (no rule of its own): problem sets and their loading
(:mod:`.problemsets`), chat-formatted prompts and completions as token ids (:mod:`.prompting`),
answer extraction and grading (:mod:`.grading`), and the rollout table's schema, import and reading
(:mod:`.rollouts`). Reads hub datasets, local JSONL/JSON/parquet/CSV files or the toy world.
"""
