"""The host's side of the link to a board running TensorFlow Lite Micro.

`BoardLink` starts the board process (`targets/mcu/AI_Project/board.py` under the TFLite Micro
environment's interpreter) and exchanges frames with it over its stdin/stdout, as a host
would over a board's serial port: a 4-byte big-endian length and a JSON header, then a 4-byte
length and a binary payload. A board that stops answering (TFLite Micro can crash on a tensor
arena that is too small) is a `BoardCrashed`.

`load_failure` turns what TFLite Micro printed when a model did not load into the reason in
words: an operator it lacks, or an arena that is too small (measured by a probe board
without the SRAM budget, as a lab measures a model on a bigger board).
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vlab_backend.mcu.profiles import MIB, arena_message, flash_message

# TFLite Micro's messages (C++, on the board's stderr).
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)'"
                         r"|Failed to get registration from op code (\w+)")
_CUSTOM_OP = re.compile(r"Didn't find op for custom opcode '([^']+)'")
_PREPARE = re.compile(r"Node (\w+) \(number \d+\S*\) failed to prepare")
# A C++ source location in front of a check's text (`path/file.cc:42 `).
_SOURCE_LOCATION = re.compile(r"\S+\.(?:cc|cpp|h):\d+\s*")
_ALLOCATION = re.compile(r"Failed to allocate|Failed starting model allocation|"
                         r"failed to allocate tensors|Arena size is too small", re.IGNORECASE)
# A probe board's arena: big enough for any model a microcontroller profile may hold.
PROBE_ARENA_MIN = 64 * MIB


class LinkError(RuntimeError):
    """The board refused a command or the link broke; the message is the reason in words."""


class BoardCrashed(LinkError):
    """The board process ended while the host waited for its answer."""


@dataclass(frozen=True)
class BoardSpec:
    """What the host starts a board with: its firmware, interpreter and budgets."""

    python: Path
    firmware: Path
    name: str
    flash_bytes: int
    sram_bytes: int
    clock_mhz: float = 0.0

    def command(self) -> list[str]:
        return [str(self.python), str(self.firmware), "--name", self.name,
                "--flash", str(self.flash_bytes), "--sram", str(self.sram_bytes),
                "--clock-mhz", str(self.clock_mhz)]


class BoardLink:
    """One board process and the link to it. A context manager: leaving it powers the board
    off (asks it to quit, then kills it)."""

    def __init__(self, spec: BoardSpec, log: Path) -> None:
        self.spec = spec
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self.proc = subprocess.Popen(spec.command(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)

    def __enter__(self) -> BoardLink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"}, b"")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()

    def _send(self, header: dict[str, Any], payload: bytes) -> None:
        stream = self.proc.stdin
        assert stream is not None
        data = json.dumps(header).encode()
        stream.write(struct.pack(">I", len(data)) + data + struct.pack(">I", len(payload)))
        if payload:
            stream.write(payload)
        stream.flush()

    def _read_exact(self, size: int) -> bytes:
        stream = self.proc.stdout
        assert stream is not None
        data = stream.read(size) if size else b""
        if len(data) < size:
            raise BoardCrashed(self._crash_message())
        return data

    def _crash_message(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"the board {self.spec.name} stopped answering"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals.__members__.values() \
                else str(-code)
            return f"the board {self.spec.name} crashed ({name})"
        return f"the board {self.spec.name} stopped (exit code {code})"

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any],
                                                                             bytes]:
        """Send one command and read its answer (header, payload); LinkError if the link
        breaks, BoardCrashed if the board is gone."""
        try:
            self._send(header, payload)
        except (BrokenPipeError, ValueError) as exc:
            raise BoardCrashed(self._crash_message()) from exc
        size = struct.unpack(">I", self._read_exact(4))[0]
        answer = json.loads(self._read_exact(size))
        data = self._read_exact(struct.unpack(">I", self._read_exact(4))[0])
        if not isinstance(answer, dict):
            raise LinkError(f"the board {self.spec.name} sent a malformed answer")
        return answer, data

    def board_log(self) -> str:
        """What the board printed (TFLite Micro's messages) so far."""
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def load_failure(log: str, error: str = "") -> tuple[str, str | None]:
    """The kind of a load failure from TFLite Micro's messages: ("op", name) for an operator
    it lacks or cannot prepare with these tensor types, ("arena", None) for an arena that is
    too small, ("error", None) otherwise."""
    if missing := _MISSING_OP.search(log):
        return "op", missing.group(1) or missing.group(2)
    if custom := _CUSTOM_OP.search(log):
        return "op", custom.group(1)
    if _ALLOCATION.search(log):
        return "arena", None
    if prepare := _PREPARE.search(log):
        return "op", prepare.group(1)
    # The runtime's exception says "failed to allocate tensors" whatever failed: only when
    # the log names nothing else.
    if _ALLOCATION.search(error):
        return "arena", None
    return "error", None


def op_message(op: str, log: str) -> str:
    """`op X is not supported by TFLite Micro`, with TFLite Micro's own words on why when it
    has the kernel but not for these tensor types (e.g. float16 weights)."""
    message = f"op {op} is not supported by TFLite Micro"
    if _MISSING_OP.search(log) or _CUSTOM_OP.search(log):
        return message
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    detail = next((line for line in lines
                   if not _PREPARE.search(line) and "allocat" not in line.lower()), "")
    detail = _SOURCE_LOCATION.sub("", detail).strip()
    return f"{message} with these tensor types ({detail})" if detail else message


def last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def explain_load_failure(spec: BoardSpec, model: bytes, answer: dict[str, Any], log: str,
                         probe_log: Path, crashed: str = "") -> str:
    """The reason in words a model did not load on the board `spec`: the operator TFLite Micro
    lacks, or the arena the model needs against the board's SRAM (measured on a probe board
    with a large arena), or TFLite Micro's last words."""
    log = "\n".join(part for part in (str(answer.get("log") or ""), log) if part)
    kind, op = load_failure(log, str(answer.get("error", "")))
    if kind == "op" and op:
        return op_message(op, log)
    if kind == "arena" or crashed:
        needed, probe_reason = probe_arena(spec, model, probe_log)
        if needed is not None:
            return arena_message(needed, spec.sram_bytes, spec.name)
        if probe_reason:
            return probe_reason
    return ("TFLite Micro could not load the model: "
            + (last_line(log) or str(answer.get("error")) or crashed))


def probe_arena(spec: BoardSpec, model: bytes, log: Path) -> tuple[int | None, str]:
    """The arena bytes `model` needs, measured on a probe board whose SRAM is not limited (at
    least PROBE_ARENA_MIN); or None and the reason the model does not load there either."""
    data = model
    probe = BoardSpec(spec.python, spec.firmware, f"{spec.name}-probe",
                      max(spec.flash_bytes, len(data)),
                      max(PROBE_ARENA_MIN, 16 * len(data)), spec.clock_mhz)
    with BoardLink(probe, log) as link:
        try:
            link.request({"cmd": "flash"}, data)
            answer, _ = link.request({"cmd": "load", "arena": probe.sram_bytes})
        except BoardCrashed as exc:
            return None, f"TFLite Micro could not load the model: {exc}"
        if answer.get("ok"):
            used = answer.get("arena_used")
            return (int(used) if used is not None else None), ""
        probe_text = "\n".join(part for part in (str(answer.get("log") or ""),
                                                 link.board_log()) if part)
    kind, op = load_failure(probe_text, str(answer.get("error", "")))
    if kind == "op" and op:
        return None, op_message(op, probe_text)
    return None, "TFLite Micro could not load the model: " + (
        last_line(probe_text) or str(answer.get("error")))


def flash(link: BoardLink, model: bytes) -> dict[str, Any]:
    """Send the model to the board's flash; LinkError naming the budget if it does not fit."""
    answer, _ = link.request({"cmd": "flash"}, model)
    if not answer.get("ok"):
        if answer.get("reason") == "flash":
            raise LinkError(flash_message(int(answer["needed"]), int(answer["available"]),
                                          link.spec.name))
        raise LinkError(f"the board {link.spec.name} refused the model: {answer.get('error')}")
    return answer
