"""Configuration: pydantic models for every pipeline and request, validated once, at the edge.

Import ``photonstream.config.pipeline`` for the pipeline model; this package stays light so that plugin modules
can import ``photonstream.config.base`` without pulling in every plugin.
``photonstream.config.environment`` registers every environment variable (names the code imports);
``photonstream.config.reference`` makes docs/settings.md from the settings models and that registry.
"""
