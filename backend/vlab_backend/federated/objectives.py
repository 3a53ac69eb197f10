"""Objectives that end an experiment, checked after every round.

* `max_rounds`: after round `max_rounds`.
* `time_to_acc` / `time_to_loss`: as soon as the global accuracy reaches `target_accuracy`
  (loss falls to `target_loss`); the result says when (experiment time).
* `acc_at_time` / `loss_at_time`: at the end of the first round at which the experiment
  clock reaches `time_seconds`; the result holds the accuracy (loss) then.

The global accuracy and loss are the server dataset's when the experiment has one, else the
clients' evaluations aggregated by FedAvg (weighted by test samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Reached:
    """An objective that ended the experiment."""

    objective_id: str
    type: str
    round: int
    elapsed_s: float
    value: float | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.objective_id, "type": self.type, "round": self.round,
                "elapsed_s": round(self.elapsed_s, 3), "value": self.value,
                "message": self.message}


def check(objectives: list[dict[str, Any]], round_number: int, elapsed_s: float,
          accuracy: float | None, loss: float | None) -> Reached | None:
    """The first objective (in the config's order) met after `round_number`, if any."""
    for index, objective in enumerate(objectives):
        kind = objective["type"]
        ident = str(objective.get("id") or f"O{index + 1}")

        def hit(value: float | None, message: str, kind: str = kind,
                ident: str = ident) -> Reached:
            return Reached(ident, kind, round_number, elapsed_s, value, message)

        if kind == "max_rounds" and round_number >= int(objective["max_rounds"]):
            return hit(float(round_number), f"{round_number} round(s) done")
        if kind == "time_to_acc" and accuracy is not None \
                and accuracy >= float(objective["target_accuracy"]):
            return hit(accuracy, f"accuracy {accuracy:.4f} reached the target "
                                 f"{float(objective['target_accuracy']):g} after "
                                 f"{elapsed_s:.1f} s")
        if kind == "time_to_loss" and loss is not None \
                and loss <= float(objective["target_loss"]):
            return hit(loss, f"loss {loss:.4f} reached the target "
                             f"{float(objective['target_loss']):g} after {elapsed_s:.1f} s")
        if kind in ("acc_at_time", "loss_at_time") \
                and elapsed_s >= float(objective["time_seconds"]):
            value = accuracy if kind == "acc_at_time" else loss
            name = "accuracy" if kind == "acc_at_time" else "loss"
            shown = "unknown" if value is None else f"{value:.4f}"
            return hit(value, f"{name} {shown} at {elapsed_s:.1f} s (time limit "
                              f"{float(objective['time_seconds']):g} s)")
    return None
