"""Parts that hook into the training loop through one small interface (:class:`Part`).

The loop (``training.loop``) only runs steps; everything else it does is a part: the run's
record and time accounting, the progress bar, evaluation, epoch ends, a policy's stop, the step probe that the
batch packer and the cost goal's worker planner read, saving the model and, in tests, fault
injection. A part answers a step with an :class:`Outcome` (continue, checkpoint, stop); the
:class:`Checkpointer` (not a part: the loop calls it after every part has answered) writes
every part's state."""
from .base import CHECKPOINT, CONTINUE, STOP_AFTER_STEPS, Outcome, Part, stop
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
from .step_timer import StepTimer

__all__ = ["CHECKPOINT", "CONTINUE", "CONVERGED", "STOP_AFTER_STEPS", "Checkpointer", "ConvergedStop", "CostGoal",
           "EpochEnd", "Evaluator", "KillAt", "LossGuard", "ModelSaver", "Outcome", "Packer", "Part", "Progress",
           "ProgressBar", "StepTimer", "TrainingDiverged", "stop"]
