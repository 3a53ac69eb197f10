"""Objectives that end a federated-learning experiment."""

from __future__ import annotations

from vlab_backend.federated.objectives import check

ROUNDS = {"type": "max_rounds", "id": "O1", "max_rounds": 5}


def test_max_rounds() -> None:
    assert check([ROUNDS], 4, 10.0, 0.5, 1.0) is None
    reached = check([ROUNDS], 5, 12.0, 0.5, 1.0)
    assert reached is not None and (reached.objective_id, reached.type) == ("O1", "max_rounds")
    assert reached.as_dict()["round"] == 5


def test_time_to_accuracy_and_loss() -> None:
    accuracy = {"type": "time_to_acc", "id": "O2", "target_accuracy": 0.9}
    assert check([ROUNDS, accuracy], 2, 30.0, 0.89, 0.5) is None
    assert check([ROUNDS, accuracy], 2, 30.0, None, 0.5) is None
    reached = check([ROUNDS, accuracy], 2, 30.0, 0.9, 0.5)
    assert reached is not None and reached.objective_id == "O2" and reached.value == 0.9
    assert "after 30.0 s" in reached.message
    loss = {"type": "time_to_loss", "id": "O2", "target_loss": 0.3}
    assert check([ROUNDS, loss], 1, 5.0, 0.1, 0.31) is None
    reached = check([ROUNDS, loss], 1, 5.0, 0.1, 0.3)
    assert reached is not None and reached.type == "time_to_loss"


def test_metric_at_a_time() -> None:
    at = {"type": "acc_at_time", "id": "O2", "time_seconds": 60}
    assert check([ROUNDS, at], 1, 59.9, 0.7, 1.0) is None
    reached = check([ROUNDS, at], 2, 61.0, 0.75, 1.0)
    assert reached is not None and reached.value == 0.75
    assert reached.message == "accuracy 0.7500 at 61.0 s (time limit 60 s)"
    loss_at = {"type": "loss_at_time", "id": "O2", "time_seconds": 10}
    reached = check([ROUNDS, loss_at], 1, 10.0, None, None)
    assert reached is not None and reached.value is None and "unknown" in reached.message


def test_the_first_objective_met_wins_and_ids_default_to_their_place() -> None:
    both = [{"type": "max_rounds", "max_rounds": 3},
            {"type": "time_to_acc", "target_accuracy": 0.5}]
    reached = check(both, 3, 1.0, 0.9, 0.1)
    assert reached is not None and reached.objective_id == "O1"
    reached = check(both, 2, 1.0, 0.9, 0.1)
    assert reached is not None and reached.objective_id == "O2"
