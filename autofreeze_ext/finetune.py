"""The fine-tuning driver; it lives in :mod:`autofreeze_ext.training` (this module keeps the old
import path working)."""
from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
