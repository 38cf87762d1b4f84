"""Parallel inference of one request over several ranks: sequence parallel (dynamic: the sharded dimension
switches around the attention that needs the full sequence) and CFG parallel, over torch.distributed.
How the processes are started is not this package's business (tests spawn them, the pool uses Ray)."""

from .config import ParallelConfig, ParallelConfigError
from .state import ParallelState
from .stats import CommStats

__all__ = ["CommStats", "ParallelConfig", "ParallelConfigError", "ParallelState"]
