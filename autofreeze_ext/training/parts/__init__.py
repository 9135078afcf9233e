"""Parts that hook into the training loop through one small interface (:class:`Part`).

The loop (``training.loop``) only runs steps; everything else it does is a part: the run's
record and time accounting, the progress bar, evaluation, epoch ends, a policy's stop, the step probe that the
batch packer and the cost goal's worker planner read, saving the model, checkpoints (which
hold every part's state), the report and, in tests, fault injection."""
from .base import Part
from .checkpointer import Checkpointer
from .converged import CONVERGED, ConvergedStop
from .cost_goal import CostGoal
from .epoch_end import EpochEnd
from .evaluator import Evaluator
from .faults import KillAt
from .loss_guard import LossGuard, TrainingDiverged
from .model_saver import ModelSaver
from .packer import Packer
from .progress import Progress
from .progress_bar import ProgressBar
from .reporter import Reporter
from .step_timer import StepTimer

__all__ = ["CONVERGED", "Checkpointer", "ConvergedStop", "CostGoal", "EpochEnd", "Evaluator", "KillAt", "LossGuard", "ModelSaver", "Packer", "Part",
           "Progress", "ProgressBar", "Reporter", "StepTimer", "TrainingDiverged"]
