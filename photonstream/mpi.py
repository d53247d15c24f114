"""Running a pipeline as MPI ranks (``mpirun -n N photonstream run ...`` or ``srun``).

Ranks split the source's events (``Shard``), each sends its share to the same destination, and rank 0 sends the
single end message once every rank has finished and its messages were delivered. mpi4py is imported only when the
process was started by an MPI launcher, so a plain run never needs MPI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from photonstream.config.environment import MPI_SIZE_VARIABLES  # what MPICH/Hydra, Open MPI, PMIx set per rank
from photonstream.errors import MissingDependencyError
from photonstream.sources.base import Shard


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: its shard and, with several ranks, the communicator."""

    shard: Shard = field(default_factory=Shard)
    comm: Any = None

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def size(self) -> int:
        return self.shard.size

    @property
    def is_root(self) -> bool:
        return self.shard.rank == 0


def launched_size() -> int:
    """How many ranks the launcher says there are (1 when not started by an MPI launcher)."""
    for name in MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def detect_ranks() -> Ranks:
    """The MPI world this process belongs to, or a single rank."""
    if launched_size() <= 1:
        return Ranks()
    try:
        from mpi4py import MPI
    except ImportError:
        raise MissingDependencyError.for_package("mpi4py", "running a pipeline under MPI", "psana") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() <= 1:
        return Ranks()
    return Ranks(Shard(comm.Get_rank(), comm.Get_size()), comm)
