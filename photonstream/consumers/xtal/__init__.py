"""Distributed crystal-structure determination from a photonstream: per-frame workers and a merger.

    # on each worker node (a work-sharing group of the buffer: every frame goes to one worker)
    python -m photonstream.consumers.xtal worker --buffer tcp://dtn:5600 --stream exp/42/epix --results tcp://head:5700
    # once
    python -m photonstream.consumers.xtal merge --bind tcp://*:5700 --workers 8 --mtz run42.mtz

Workers find hits and spots, index against the known cell, integrate, reduce to the asymmetric unit and scale
each frame against a shared reference (``worker.run_xtal_worker``); the merger adds the scaled intensities to
running sums, reports indexing rate, cell spread and (for synthetic runs) the CC with the true intensities, and
writes MTZ (``merge.run_merger``). ``powder`` builds the virtual powder pattern with pyFAI. cctbx (``pip install
cctbx-base``) must be imported before scipy's compiled modules, so this package imports it first (see ``_cctbx``).
"""

from photonstream.consumers.xtal import _cctbx

_cctbx.preload()  # before anything below pulls in scipy.ndimage or pyFAI

from photonstream.consumers.xtal.merge import MergeOutcome, Merger, run_merger  # noqa: E402
from photonstream.consumers.xtal.worker import XtalOptions, run_xtal_worker  # noqa: E402

__all__ = ["MergeOutcome", "Merger", "XtalOptions", "run_merger", "run_xtal_worker"]
