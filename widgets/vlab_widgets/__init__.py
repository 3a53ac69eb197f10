"""ipywidgets views of the VLab workbench: a launcher, a results explorer, a target board, a
page per run, the user's queue, a training run's curves and federated-learning experiments."""

from vlab_widgets.board import TargetBoard
from vlab_widgets.explorer import ResultsExplorer
from vlab_widgets.federation import ExperimentsView, FederationView
from vlab_widgets.launcher import Launcher
from vlab_widgets.queue import QueueView
from vlab_widgets.run_page import RunPage
from vlab_widgets.training import TrainingView

__all__ = ["ExperimentsView", "FederationView", "Launcher", "QueueView", "ResultsExplorer",
           "RunPage", "TargetBoard", "TrainingView"]
