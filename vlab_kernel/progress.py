"""A progress bar fed by a benchmark's events: phase, count of inferences and ETA.

The bar is drawn only once the benchmark is seen running, so following a run that has already
ended draws nothing; it ends full ("done", the whole count) when the run succeeds. Its first
rate is measured from the first count it sees, never from zero: a run found at 200 of 300
does not start at "200000 inferences/s".
"""

from __future__ import annotations

from typing import Any, TextIO

from tqdm import tqdm

from vlab_kernel.client import TERMINAL

# The phases with a count, and what they count (training jobs count epochs).
COUNTED_PHASES = {"inference": "inference", "train": "epoch", "done": "inference"}
# Before the timed phase there is no count to show, only the phase and the time it takes.
PHASE_FORMAT = "{desc} [{elapsed}]"
COUNT_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def epoch_figures(curves: Any) -> str:
    """A training's last epoch in a few words, from the curves its progress carries:
    "loss 0.412 (test 0.45), test accuracy 86.4 %"; empty without curves."""
    if not isinstance(curves, dict) or not curves.get("epoch"):
        return ""

    def last(key: str) -> float | None:
        values = curves.get(key) or []
        return values[-1] if values and isinstance(values[-1], int | float) else None

    parts = []
    train, test, accuracy = last("loss_train"), last("loss_test"), last("accuracy_test")
    if train is not None:
        parts.append(f"loss {train:.3g}" + (f" (test {test:.3g})" if test is not None else ""))
    if accuracy is not None:
        parts.append(f"test accuracy {accuracy * 100:.3g} %")
    return ", ".join(parts)


class ProgressPrinter:
    """Feed it every event of one benchmark (`update`), then `close` it.

    `bar` is the tqdm class to draw with: `tqdm.tqdm` in a terminal, `tqdm.auto.tqdm` in a
    notebook (a widget); `file` is where a text bar goes (stderr by default).
    """

    def __init__(self, bench_id: str, bar: type[tqdm] = tqdm, file: TextIO | None = None,
                 leave: bool = False) -> None:
        self._id = bench_id
        self._tqdm = bar
        self._file = file
        self._leave = leave
        self._bar: tqdm | None = None

    def _draw(self) -> tqdm:
        if self._bar is None:
            self._bar = self._tqdm(total=1, desc=f"{self._id} pending", unit="inference",
                                   bar_format=PHASE_FORMAT, leave=self._leave, file=self._file,
                                   dynamic_ncols=True)
        return self._bar

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status") or "")
        if self._bar is None and status in TERMINAL:
            return  # over before we looked: nothing to show
        bar = self._draw()
        progress = event.get("progress") or {}
        phase = progress.get("phase") or status
        total, done = progress.get("total") or 0, progress.get("done") or 0
        if total and phase in COUNTED_PHASES:
            bar.unit = COUNTED_PHASES[phase] if phase != "done" else bar.unit
            if bar.total != total:
                # The count restarts with the timed phase; the first count seen is the
                # baseline, so the rate (and the ETA) come from what follows it.
                bar.bar_format = COUNT_FORMAT
                bar.reset(total=total)
                bar.initial = bar.n = bar.last_print_n = done
            elif done > bar.n:
                bar.update(done - bar.n)
        figures = epoch_figures(progress.get("curves"))
        if figures:
            bar.set_postfix_str(figures, refresh=False)
        if status == "success":
            phase = "done"
            bar.update(bar.total - bar.n)
        elif status in TERMINAL:
            phase = status
        bar.set_description_str(f"{self._id} {phase}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
