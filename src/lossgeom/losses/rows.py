"""What the NLL family's views share: the rollout rows with a per-row weight (1 unless the loss says)."""

from __future__ import annotations

from .base import Loss, ViewError


class RowsLoss(Loss):
    """An offline loss on (a subset of) the rollout rows; :meth:`select` picks them."""

    def select(self, rows, spec, counts):
        return rows

    def view(self, rollouts, rows, spec, seed, counts):
        view = self.select(rows, spec, counts)
        if "weight" not in view:
            view = view.assign(weight=1.0)
        if view.empty:
            raise ViewError(f"method {spec.method!r} ({self.name}): no rollout to train on; counts {counts}")
        counts["rows"] = int(len(view))
        return view
