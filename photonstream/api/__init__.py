"""The data-request API: who may stream which experiment, and the streams' lifecycle (``create_app``)."""
