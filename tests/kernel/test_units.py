"""One number format for the whole client: ms, MiB, 3 significant digits."""

from __future__ import annotations

import math

import pytest

from vlab_kernel.units import MIB, MS, sig3


@pytest.mark.parametrize(("value", "scale", "shown"), [
    (0.0123456, MS, "12.3"), (0.000123456, MS, "0.123"), (125 * MIB, 1 / MIB, "125"),
    (1234.5, 1.0, "1,234"), (-0.5, 1.0, "-0.5"), (3, 1.0, "3"), ("n/a", 1.0, "n/a"),
    (True, 1.0, "True"),
])
def test_numbers_are_shown_to_3_significant_digits(value: object, scale: float,
                                                  shown: str) -> None:
    assert sig3(value, scale) == shown


def test_unknown_values_show_the_missing_mark() -> None:
    assert sig3(None) == sig3(math.nan) == "–"
    assert sig3(None, missing="") == sig3(math.nan, missing="") == ""


def test_the_cli_and_the_widgets_share_the_format() -> None:
    from vlab_kernel import cli
    from vlab_widgets import common

    assert common.sig3 is sig3 and common.MS == cli.MS == MS and common.MIB == cli.MIB == MIB
    assert cli._sig3(0.0123456, MS) == "12.3" and cli._sig3(None) == ""
