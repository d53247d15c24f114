"""From merged intensities to a structure while the run goes: refinement, R-work/R-free, maps and peaks (cctbx).

    python -m photonstream.consumers.xtal structure --bind tcp://*:5710 --model 1aki --out run42/structure
    python -m photonstream.consumers.xtal merge --bind tcp://*:5700 --structure tcp://HOST:5710 ...

The merger sends its merged data every few seconds (``xtal.to_structure``); the stage refines the model against
the newest (``refine``), computes σA-weighted and difference maps and their peaks (``maps``), and writes MTZ and
CCP4 files (``stage``). It runs in a process of its own (``worker``): cctbx must be imported before scipy's
compiled modules, which importing ``photonstream.consumers.xtal`` first takes care of.
"""

from photonstream.consumers.xtal import _cctbx

_cctbx.preload()

from photonstream.consumers.structure.stage import StructureStage  # noqa: E402
from photonstream.consumers.structure.worker import run_structure_stage  # noqa: E402

__all__ = ["StructureStage", "run_structure_stage"]
