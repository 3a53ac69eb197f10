"""Board profiles of the MCU-class targets: the budgets a model must fit.

A profile names a class of microcontroller board: flash for the model (as stored), SRAM for
TensorFlow Lite Micro's tensor arena, the core clock and the number of cores. A target
configuration entry takes one with the local extension `"mcu_profile": "cortex-m4"`, which
fills the instance's dAIEdge `memory` (`storage` = flash, `ram` = SRAM) and gives its
engines the `VLAB_MCU_*` variables the target repository (`targets/mcu`) reads.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024

# The variables a job of an MCU target sees (from its engine offer's `env`).
PROFILE_VAR = "VLAB_MCU_PROFILE"
FLASH_VAR = "VLAB_MCU_FLASH_BYTES"
SRAM_VAR = "VLAB_MCU_SRAM_BYTES"
CLOCK_VAR = "VLAB_MCU_CLOCK_MHZ"
CORES_VAR = "VLAB_MCU_CORES"


@dataclass(frozen=True)
class BoardProfile:
    """A class of board: its name and its budgets."""

    name: str
    description: str
    flash_bytes: int
    sram_bytes: int
    clock_mhz: int
    cores: int = 1

    def memory(self) -> dict[str, int]:
        """The dAIEdge target configuration's `memory` object of an instance of this board."""
        return {"storage": self.flash_bytes, "ram": self.sram_bytes}

    def env(self) -> dict[str, str]:
        """The variables the MCU target repository reads."""
        return {PROFILE_VAR: self.name, FLASH_VAR: str(self.flash_bytes),
                SRAM_VAR: str(self.sram_bytes), CLOCK_VAR: str(self.clock_mhz),
                CORES_VAR: str(self.cores)}


PROFILES: dict[str, BoardProfile] = {
    profile.name: profile for profile in (
        BoardProfile("cortex-m4", "Cortex-M4F class (e.g. STM32F407: 1 MiB flash, "
                     "256 KiB SRAM, 168 MHz)", 1 * MIB, 256 * KIB, 168),
        BoardProfile("cortex-m7", "Cortex-M7 class (e.g. STM32H743: 2 MiB flash, 1 MiB SRAM, "
                     "480 MHz)", 2 * MIB, 1 * MIB, 480),
    )
}


def human_bytes(size: int) -> str:
    """`1 MiB`, `1.2 MiB`, `256 KiB`, `900 bytes`: three significant digits at most."""
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def need_and_budget(needed: int, available: int) -> tuple[str, str]:
    """Both sizes in words, in bytes where rounding would make them read alike."""
    need, have = human_bytes(needed), human_bytes(available)
    if need == have:
        return f"{needed:,} bytes", f"{available:,} bytes"
    return need, have


def flash_message(needed: int, available: int, board: str) -> str:
    need, have = need_and_budget(needed, available)
    return f"model needs {need} of flash; {board} has {have}"


def arena_message(needed: int, available: int, board: str) -> str:
    need, have = need_and_budget(needed, available)
    return f"tensor arena needs {need}; {board} has {have} of SRAM"
