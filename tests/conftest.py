"""Suite-wide setup.

cctbx must be imported before scipy's compiled modules, hdf5plugin or pyFAI (see
``photonstream.consumers.xtal._cctbx``). Every photonstream process that needs it keeps that order itself
(``python -m photonstream.consumers.xtal``, the structure stage); a test session runs many of those consumers
in one interpreter after other tests loaded scipy, so it imports cctbx first, as those entry points do.
"""

from photonstream.consumers.xtal import _cctbx

_cctbx.preload()
