"""Jobs: what a stream request runs, and the backends that run it (local, slurm, sfapi). See ``base.py``."""
