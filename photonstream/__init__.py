"""photonstream: stream X-ray experiment data on request, from a facility to the people and machines that analyse it."""

from photonstream.errors import PhotonstreamError
from photonstream.frames import (
    CalibrationMessage,
    EndMessage,
    Frame,
    FrameBatch,
    Geometry,
    Message,
    StartMessage,
)

__version__ = "0.1.0"

__all__ = [
    "CalibrationMessage",
    "EndMessage",
    "Frame",
    "FrameBatch",
    "Geometry",
    "Message",
    "PhotonstreamError",
    "StartMessage",
    "__version__",
]
