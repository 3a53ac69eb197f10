"""ipywidgets views of the VLab workbench: a launcher, a results explorer and a target board."""

from vlab_widgets.board import TargetBoard
from vlab_widgets.explorer import ResultsExplorer
from vlab_widgets.launcher import Launcher

__all__ = ["Launcher", "ResultsExplorer", "TargetBoard"]
