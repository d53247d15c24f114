"""Sources: where events come from. One module per source; see ``base.py`` for the protocol."""

from photonstream.sources.base import Source, SourceInfo, registry

__all__ = ["Source", "SourceInfo", "registry"]
