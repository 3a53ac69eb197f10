"""The MCU target's pieces without TensorFlow Lite Micro: board profiles and their messages,
the `mcu_profile` extension of the target configuration, the engine's registration, the
reasons read from TFLite Micro's messages, and the link to a board that crashes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vlab_backend.engines import engine_specs, get_spec
from vlab_backend.mcu.link import BoardCrashed, BoardLink, BoardSpec, load_failure, op_message
from vlab_backend.mcu.profiles import (
    KIB,
    MIB,
    PROFILES,
    arena_message,
    flash_message,
    human_bytes,
)
from vlab_backend.targets import TargetConfigError, load_target_config, local_cpu_targets

REPO = Path(__file__).resolve().parents[2]


def test_profiles_and_their_budgets() -> None:
    m4, m7 = PROFILES["cortex-m4"], PROFILES["cortex-m7"]
    assert (m4.flash_bytes, m4.sram_bytes, m4.clock_mhz, m4.cores) == (MIB, 256 * KIB, 168, 1)
    assert (m7.flash_bytes, m7.sram_bytes, m7.clock_mhz, m7.cores) == (2 * MIB, MIB, 480, 1)
    assert m4.memory() == {"storage": MIB, "ram": 256 * KIB}
    assert m4.env()["VLAB_MCU_SRAM_BYTES"] == str(256 * KIB)


def test_budget_messages_in_words() -> None:
    assert human_bytes(1_258_291) == "1.2 MiB" and human_bytes(300 * KIB) == "300 KiB"
    assert human_bytes(900) == "900 bytes"
    assert flash_message(1_258_291, MIB, "cortex-m4") == \
        "model needs 1.2 MiB of flash; cortex-m4 has 1 MiB"
    assert arena_message(300 * KIB, 256 * KIB, "cortex-m4") == \
        "tensor arena needs 300 KiB; cortex-m4 has 256 KiB of SRAM"
    # Sizes that would read alike once rounded are given in bytes.
    assert flash_message(MIB + 10, MIB, "cortex-m4") == \
        "model needs 1,048,586 bytes of flash; cortex-m4 has 1,048,576 bytes"


def test_the_target_file_of_the_boards() -> None:
    instances = {i.uid: i for i in load_target_config(REPO / "targets" / "mcu" / "targets.json")}
    m4 = instances["mcu-cortex-m4-0"]
    assert m4.target_type == "mcu-cortex-m4" and m4.memory == {"storage": MIB, "ram": 256 * KIB}
    offer = m4.engines["tflite-micro"]
    assert offer.repository == str(REPO / "targets" / "mcu")
    assert offer.env["VLAB_MCU_PROFILE"] == "cortex-m4"
    assert offer.env["VLAB_MCU_FLASH_BYTES"] == str(MIB)
    assert offer.env["VLAB_ENGINE_FORMATS"] == "tflite"
    assert instances["mcu-cortex-m7-0"].memory == {"storage": 2 * MIB, "ram": MIB}


def test_a_board_of_its_own_overrides_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"stm32f4": [{
        "target_uid": "stm32f4-0001", "mcu_profile": "cortex-m4",
        "memory": {"ram": 192 * KIB},
        "engines": {"tflite-micro": {"repository": "repo", "env": {"VLAB_MCU_CLOCK_MHZ": "84"}}},
    }]}))
    [instance] = load_target_config(path)
    assert instance.memory == {"storage": MIB, "ram": 192 * KIB}
    env = instance.engines["tflite-micro"].env
    assert env["VLAB_MCU_SRAM_BYTES"] == str(192 * KIB) and env["VLAB_MCU_CLOCK_MHZ"] == "84"
    path.write_text(json.dumps({"x": [{"target_uid": "x-1", "mcu_profile": "cortex-a53",
                                       "engines": {"tflite-micro": {"repository": "r"}}}]}))
    with pytest.raises(TargetConfigError, match="'mcu_profile' must be one of cortex-m4"):
        load_target_config(path)


def test_the_engine_is_registered_but_not_offered_on_host_cpu() -> None:
    spec = get_spec("tflite-micro")
    assert spec.formats == ("tflite",) and spec.host_cpu is False
    assert "tflite-micro" in engine_specs()
    assert all("tflite-micro" not in i.engines for i in local_cpu_targets())
    assert spec.validate_parameters({"arena_bytes": "4096"}) == {"arena_bytes": 4096}


@pytest.mark.parametrize(("log", "error", "kind", "op"), [
    ("Didn't find op for builtin opcode 'DENSIFY'\nFailed to get registration from op code "
     "DENSIFY", "RuntimeError: TFLM failed to allocate tensors", "op", "DENSIFY"),
    ("tensorflow/lite/micro/kernels/dequantize_common.cc:42 input->type == kTfLiteInt8 was not "
     "true.\nNode DEQUANTIZE (number 0) failed to prepare with status 1",
     "RuntimeError: TFLM failed to allocate tensors", "op", "DEQUANTIZE"),
    ("Failed to allocate tail memory. Requested: 64, available 0, missing: 64\n"
     "Failed starting model allocation.", "RuntimeError: TFLM failed to allocate tensors",
     "arena", None),
    ("", "RuntimeError: TFLM failed to allocate tensors", "arena", None),
    ("something else", "RuntimeError: boom", "error", None),
])
def test_load_failures_are_read_from_the_runtime_messages(log: str, error: str, kind: str,
                                                          op: str | None) -> None:
    assert load_failure(log, error) == (kind, op)


def test_op_messages_name_the_op_and_why() -> None:
    assert op_message("DENSIFY", "Didn't find op for builtin opcode 'DENSIFY'") == \
        "op DENSIFY is not supported by TFLite Micro"
    message = op_message("DEQUANTIZE", "tensorflow/lite/micro/kernels/dequantize_common.cc:42 "
                         "input->type == kTfLiteInt8 was not true.\nNode DEQUANTIZE (number 0) "
                         "failed to prepare with status 1")
    assert message == ("op DEQUANTIZE is not supported by TFLite Micro with these tensor "
                       "types (input->type == kTfLiteInt8 was not true.)")


def test_a_board_that_crashes_is_named(tmp_path: Path) -> None:
    firmware = tmp_path / "crash.py"
    firmware.write_text("import os, signal, sys\nsys.stdin.buffer.read(4)\n"
                        "os.kill(os.getpid(), signal.SIGSEGV)\n")
    spec = BoardSpec(Path(sys.executable), firmware, "cortex-m4", MIB, 256 * KIB)
    with BoardLink(spec, tmp_path / "board.log") as link, \
            pytest.raises(BoardCrashed, match=r"the board cortex-m4 crashed \(SIGSEGV\)"):
        link.request({"cmd": "hello"})
