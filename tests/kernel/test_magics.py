"""`%vlab` passes names and tags through to the Lab, as `vlab bench`/`vlab results` do."""

from __future__ import annotations

from typing import Any

from vlab_kernel.magics import VlabMagics


class RecordingLab:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def results(self, **kwargs: Any) -> str:
        self.calls.append(("results", kwargs))
        return "frame"

    def benchmark(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("benchmark", kwargs))
        return "bench"


def magics_with(lab: RecordingLab) -> VlabMagics:
    magics = VlabMagics.__new__(VlabMagics)  # no IPython shell needed to parse and dispatch
    magics._lab = lab  # type: ignore[assignment]
    return magics


def test_results_filter_by_tags_and_name() -> None:
    lab = RecordingLab()
    assert magics_with(lab).vlab("results --tag fp32 --tag baseline --name resnet") == "frame"
    assert lab.calls == [("results", {"target": None, "engine": None, "model": None,
                                      "status": None, "tags": ["fp32", "baseline"],
                                      "name": "resnet"})]


def test_bench_labels_the_run() -> None:
    lab = RecordingLab()
    magics_with(lab).vlab("bench m.onnx --target host-cpu --engine onnxruntime "
                          "--name first --tag fp32")
    kind, kwargs = lab.calls[0]
    assert kind == "benchmark" and kwargs["name"] == "first" and kwargs["tags"] == ["fp32"]
