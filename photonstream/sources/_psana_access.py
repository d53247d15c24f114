"""How the ``psana`` source talks to psana: field accessors, and an offline, MPI-neutral run-directory reader.

Everything here imports psana lazily; the ``psana`` source module stays importable without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

ACCESSOR = re.compile(r"^(?:(?P<detector>[^:\s]+):)?(?P<interface>[A-Za-z_]\w*)(?:\.(?P<method>[A-Za-z_]\w*))?$")
ACCESSOR_HELP = "'method' (on 'raw'), 'interface.method', or 'detector:interface.method'"


@dataclass(frozen=True, slots=True)
class Accessor:
    """One requested field: our name for it and the psana call that reads it (``det.<interface>.<method>(evt)``)."""

    name: str
    detector: str
    interface: str
    method: str

    @property
    def spec(self) -> str:
        return f"{self.detector}:{self.interface}.{self.method}"


def parse_accessor(name: str, spec: str, default_detector: str) -> Accessor:
    """``raw`` → raw.raw, ``calib`` → raw.calib, ``xtc1dump.image``, ``tof:xtc1dump.waveform`` (other detector)."""
    match = ACCESSOR.match(spec.strip())
    if match is None:
        raise ValueError(f"fields.{name}: {spec!r} is not an accessor; write {ACCESSOR_HELP}")
    interface, method = match["interface"], match["method"]
    if method is None:
        interface, method = "raw", interface
    return Accessor(name, match["detector"] or default_detector, interface, method)


def available_accessors(run: Any, detector: str) -> list[str]:
    """``interface.method`` names the run offers for ``detector``, from psana's own detector summary."""
    out = []
    for (det_name, interface), attrs in run.detinfo.items():
        if det_name != detector or not isinstance(attrs, list | tuple):
            continue
        out.extend(f"{interface}.{a}" for a in attrs if not a.startswith("_") and a != "config")
    return sorted(out)


Reader = Callable[[Any], Any]


def bind_accessors(run: Any, accessors: Iterable[Accessor], where: str) -> list[tuple[str, Reader]]:
    """Look every accessor up on ``run``; raise ValueError with one line naming what is missing."""
    detectors: dict[str, Any] = {}
    present = sorted(run.detnames)
    readers: list[tuple[str, Reader]] = []
    for acc in accessors:
        if acc.detector not in detectors:
            if acc.detector not in present:
                raise ValueError(
                    f"{where}: no detector {acc.detector!r} in run {run.runnum}; present: {', '.join(present)}"
                )
            detectors[acc.detector] = run.Detector(acc.detector)
        interface = getattr(detectors[acc.detector], acc.interface, None)
        method = getattr(interface, acc.method, None) if interface is not None else None
        if not callable(method):
            offered = ", ".join(available_accessors(run, acc.detector)) or "nothing"
            raise ValueError(
                f"{where}: fields.{acc.name}: detector {acc.detector!r} has no "
                f"{acc.interface}.{acc.method}; it offers {offered}"
            )
        readers.append((acc.name, method))
    return readers


@cache
def offline_run_datasource() -> type:
    """psana's serial reader for ``exp``/``run``/``dir`` layouts, changed in two ways: it finds the run's
    files on disk (psana first asks SLAC's logbook web service, which is unreachable off-site), and it builds
    no SmallData writer (whose MPI set-up fails when each of several ranks reads its own share)."""
    from psana.psexp.ds_base import DataSourceBase
    from psana.psexp.serial_ds import SerialDataSource

    class OfflineRunDataSource(SerialDataSource):  # type: ignore[misc,valid-type]
        def __init__(self, **kwargs: Any) -> None:
            DataSourceBase.__init__(self, **kwargs)
            self._setup_runnum_list()
            self.runnum_list_index = 0
            self.smd_fds = None
            self.smalldata_obj = None
            self._setup_run()

        def _get_file_info_from_db(self, runnum: int) -> dict[str, Any]:
            return {}

    return OfflineRunDataSource
