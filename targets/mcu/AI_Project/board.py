"""The simulated board's firmware: TensorFlow Lite Micro behind a serial-like link.

Started by the host (`vlab_backend.mcu.link`) with the board's budgets and run by the
interpreter of the target's TFLite Micro environment (it imports only numpy and
tflite_micro). It talks over its stdin/stdout like a board over a UART: each frame is a
4-byte big-endian length and a JSON header, then a 4-byte length and a binary payload.

Commands (header `cmd`), each answered with one frame (`ok` true or false):

- `hello`: the board's name, budgets and runtime version.
- `flash` (payload: the model): stored if it fits the flash budget.
- `load` (`arena`: bytes, at most the SRAM budget): the interpreter on a static tensor arena
  of that size; answers the arena bytes actually used (TFLite Micro's recording allocator)
  and the input and output tensors. On failure, `log` holds what TFLite Micro printed.
- `invoke` (payload: the inputs, concatenated in model order, or empty to keep the bound
  ones; `outputs`: send the outputs back): one inference, timed on the board around
  `invoke()` alone (`board_s`).
- `quit`.

On a real board the same frames go over the serial link; the model would be flashed by the
deploy step rather than sent, and the timing read from the cycle counter (DWT_CYCCNT).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame, or None at the end of the link."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    header = json.loads(stream.read(struct.unpack(">I", head)[0]))
    size = struct.unpack(">I", stream.read(4))[0]
    payload = stream.read(size) if size else b""
    return header, payload


def write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps(header).encode()
    stream.write(struct.pack(">I", len(data)) + data + struct.pack(">I", len(payload)))
    stream.write(payload)
    stream.flush()


def captured_stderr(call: Callable[[], Any]) -> tuple[Any, str, BaseException | None]:
    """Run `call` with file descriptor 2 captured: TFLite Micro's C++ code prints there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        error: BaseException | None = None
        result = None
        try:
            result = call()
        except Exception as exc:  # the runtime raises RuntimeError, ValueError, IndexError
            error = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read().decode(errors="replace"), error


def tensor_details(details: dict[str, Any]) -> dict[str, Any]:
    quant = details.get("quantization_parameters") or {}
    scales = [float(s) for s in np.asarray(quant.get("scales", [])).ravel()]
    zeros = [int(z) for z in np.asarray(quant.get("zero_points", [])).ravel()]
    return {"shape": [int(d) for d in details["shape"]],
            "dtype": np.dtype(details["dtype"]).name,
            "scale": scales[0] if len(scales) == 1 else None,
            "zero_point": zeros[0] if len(zeros) == 1 else None}


def all_details(get: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        details, _log, error = captured_stderr(lambda: get(len(found)))
        if error is not None:
            return found
        found.append(tensor_details(details))


class Board:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = b""
        self.interpreter: Any = None
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []

    def hello(self, _header: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
        from tflite_micro.python.tflite_micro import _version

        return {"ok": True, "board": self.args.name, "flash_bytes": self.args.flash,
                "sram_bytes": self.args.sram, "clock_mhz": self.args.clock_mhz,
                "runtime": f"tflite-micro {_version.__version__}"}, b""

    def flash(self, _header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        if len(payload) > self.args.flash:
            return {"ok": False, "reason": "flash", "needed": len(payload),
                    "available": self.args.flash}, b""
        self.model = payload
        return {"ok": True, "flash_used": len(payload)}, b""

    def load(self, header: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
        from tflite_micro import runtime

        arena = int(header.get("arena") or self.args.sram)
        if arena > self.args.sram:
            return {"ok": False, "reason": "sram", "needed": arena,
                    "available": self.args.sram}, b""
        started = time.perf_counter()
        interpreter, log, error = captured_stderr(
            lambda: runtime.Interpreter.from_bytes(self.model, arena_size=arena))
        init_s = time.perf_counter() - started
        if error is not None:
            return {"ok": False, "reason": "load", "error": f"{type(error).__name__}: {error}",
                    "log": log[-4000:]}, b""
        self.interpreter = interpreter
        self.inputs = all_details(interpreter.get_input_details)
        self.outputs = all_details(interpreter.get_output_details)
        return {"ok": True, "init_s": init_s, "arena_bytes": arena,
                "arena_used": self.arena_used(), "inputs": self.inputs,
                "outputs": self.outputs}, b""

    def arena_used(self) -> int | None:
        _result, log, _error = captured_stderr(self.interpreter.print_allocations)
        marker = "Arena allocation total "
        for line in log.splitlines():
            if marker in line:
                return int(line.split(marker, 1)[1].split()[0])
        return None

    def invoke(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        if self.interpreter is None:
            return {"ok": False, "reason": "state", "error": "no model is loaded"}, b""
        if payload:
            offset = 0
            for index, spec in enumerate(self.inputs):
                count = int(np.prod(spec["shape"]))
                dtype = np.dtype(spec["dtype"])
                array = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
                offset += count * dtype.itemsize
                self.interpreter.set_input(array.reshape(spec["shape"]), index)
        clock = time.perf_counter
        try:
            started = clock()
            self.interpreter.invoke()
            board_s = clock() - started
        except Exception as exc:  # TFLite Micro printed the cause on stderr (the board log)
            return {"ok": False, "reason": "invoke", "error": f"{type(exc).__name__}: {exc}"}, b""
        out = b""
        if header.get("outputs"):
            out = b"".join(np.ascontiguousarray(self.interpreter.get_output(i)).tobytes()
                           for i in range(len(self.outputs)))
        return {"ok": True, "board_s": board_s}, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--flash", type=int, required=True, help="flash bytes for the model")
    parser.add_argument("--sram", type=int, required=True, help="SRAM bytes for the arena")
    parser.add_argument("--clock-mhz", type=float, default=0.0)
    args = parser.parse_args()
    board = Board(args)
    link_in, link_out = sys.stdin.buffer, sys.stdout.buffer
    # Nothing but frames may reach the link: anything else printed goes to stderr.
    sys.stdout = sys.stderr
    handlers = {"hello": board.hello, "flash": board.flash, "load": board.load,
                "invoke": board.invoke}
    while True:
        frame = read_frame(link_in)
        if frame is None or frame[0].get("cmd") == "quit":
            return 0
        header, payload = frame
        handler = handlers.get(str(header.get("cmd")))
        if handler is None:
            write_frame(link_out, {"ok": False, "reason": "protocol",
                                   "error": f"unknown command {header.get('cmd')!r}"})
            continue
        answer, data = handler(header, payload)
        write_frame(link_out, answer, data)


if __name__ == "__main__":
    sys.exit(main())
