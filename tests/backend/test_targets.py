from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from vlab_backend.targets import (
    TargetConfigError,
    load_target_config,
    local_cpu_targets,
    parse_target_config,
)


def test_local_cpu_has_one_pinned_instance_per_core() -> None:
    instances = local_cpu_targets()
    cores = sorted(os.sched_getaffinity(0))
    assert [i.uid for i in instances] == [f"host-cpu-{c}" for c in cores]
    assert [i.cpuset for i in instances] == [[c] for c in cores]
    assert set(instances[0].engines) == {"onnxruntime", "openvino", "tflite"}
    assert Path(instances[0].engines["onnxruntime"].repository, "AI_Manager",
                "manager.sh").is_file()


def test_a_dAIEdge_target_file_is_read(tmp_path: Path) -> None:
    config = {"rpi5": [{"target_uid": "rpi5-0001-0001", "memory": {"ram": 8 << 30},
                        "repository": "repo",
                        "engines": {"tflite": {"version": "2.16", "image": "reg/rpi5:1",
                                               "supported_types": ["TYPE1", "TYPE2"],
                                               "env": {"BOARD": "a"}}}}]}
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(config))
    [instance] = load_target_config(path)
    assert instance.target_type == "rpi5" and instance.uid == "rpi5-0001-0001"
    offer = instance.engines["tflite"]
    assert offer.repository == str((tmp_path / "repo").resolve())
    assert offer.image == "reg/rpi5:1" and offer.env == {"BOARD": "a"}


@pytest.mark.parametrize(("config", "message"), [
    ([], "non-empty JSON object"),
    ({"rpi5": []}, "non-empty list"),
    ({"rpi5": [{"engines": {"tflite": {"repository": "r"}}}]}, "missing 'target_uid'"),
    ({"rpi5": [{"target_uid": "a"}]}, "missing 'engines'"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {}}}]}, "needs a 'repository'"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {"repository": "r",
                                                           "supported_types": ["TYPE9"]}}}]},
     "supported_types"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {"repository": "r"}}},
               {"target_uid": "a", "engines": {"tflite": {"repository": "r"}}}]},
     "duplicate target_uid"),
    ({"rpi5": [{"target_uid": "a", "cpuset": ["x"],
                "engines": {"tflite": {"repository": "r"}}}]}, "cpuset"),
])
def test_invalid_target_files_get_clear_errors(config: Any, message: str) -> None:
    with pytest.raises(TargetConfigError, match=message):
        parse_target_config(config)


def test_unreadable_target_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TargetConfigError, match="not valid JSON"):
        load_target_config(bad)
    with pytest.raises(TargetConfigError, match="cannot read"):
        load_target_config(tmp_path / "missing.json")
