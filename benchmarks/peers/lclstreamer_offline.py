"""Run lclstreamer's own CLI unchanged, with psana's DataSource defaulting to ``skip_calib_load='all'``.

Why this exists: lclstreamer's Psana2EventSource builds ``psana.DataSource(**kwargs)`` from its
``source_identifier`` string, whose parser accepts only shmem/exp/run/files/drp/max_events (the
lclstream fork adds dir/live/ffb) -- there is no way to pass ``skip_calib_load``. Without it psana
asks SLAC's calibration web service (pswww.slac.stanford.edu) for every detector, which fails
offline. So this launcher wraps ``psana.DataSource`` *before* lclstreamer imports it, then hands
control to lclstreamer's typer app (``lclstreamer.cmd.lclstreamer:app``, the ``lclstreamer``
console script). Nothing else in lclstreamer's pipeline is touched.

    python lclstreamer_offline.py --config CONFIG.yaml [--num-events N]
"""

import psana

_DataSource = psana.DataSource


def _offline_data_source(*args, **kwargs):
    kwargs.setdefault("skip_calib_load", "all")
    return _DataSource(*args, **kwargs)


psana.DataSource = _offline_data_source

from lclstreamer.cmd.lclstreamer import app  # noqa: E402  (must come after the patch)

if __name__ == "__main__":
    app()
