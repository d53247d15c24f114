"""ZeroMQ plumbing shared by handlers, sources, the buffer and consumers."""
