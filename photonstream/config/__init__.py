"""Configuration: pydantic models for every pipeline and request, validated once, at the edge.

Import ``photonstream.config.pipeline`` for the pipeline model; this package stays light so that plugin modules
can import ``photonstream.config.base`` without pulling in every plugin.
"""
