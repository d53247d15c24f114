"""``photonstream demo``: the whole system on this machine, from a user's request to merged intensities.

One process tree on embedded defaults: a fresh CA in a temporary directory (service certificate, a user
certificate for alice granted the demo experiment), the buffer service in a thread, the API with its dashboard
under uvicorn over HTTPS (client certificates optional) on a free local port, and the local job executor (or Slurm
with ``--backend slurm``). alice requests a synthetic serial-crystallography run (ePix10k2M, 120 Hz, ~10 % hits)
through the typed client with her certificate; the job runs the pipeline into the buffer (hit finder on every
frame, a thumbnail of every frame, misses vetoed to metadata + thumbnail, hit images compressed: see
``run.stream_request``); two crystallography workers (one lossless group) and their
merger, a hit-classifier trainer (group ``trainer``), a ``latest`` monitor group and the dashboard's ``_monitor``
read it. At the end a report (frames, hit rate, indexing rate, merged CC, request → first result, throughput) and
everything started is stopped.

- ``run.run_system_demo(DemoOptions(...))`` → ``DemoReport`` (the orchestration; ``benchmarks/e2e.py`` uses it);
- ``roles``: the consumer processes (``python -m photonstream.system_demo.roles worker|merge|trainer``);
- ``services``: the buffer and the API server in this process; ``pki``: the temporary CA and credentials;
- ``verdict``: the throughput figures and whether the run kept up (the asked rate reached, analysis at pace).
"""
