"""Processing steps, composed in config order. One module per step; see ``base.py`` for the protocol."""

from photonstream.processing.base import Step, StepOutput, registry

__all__ = ["Step", "StepOutput", "registry"]
