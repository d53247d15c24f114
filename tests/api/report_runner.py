"""A job's command for the integration tests: ``photonstream run PIPELINE --quiet`` with the progress reporter.

This is what ``photonstream run`` does once its ``run`` command passes ``progress=reporter_from_env()`` (the two
lines ``photonstream.cli`` gets); the tests point the service's ``run_command`` here so they need not wait for it.
"""

from __future__ import annotations

import sys

from photonstream.config.pipeline import load_pipeline
from photonstream.pipeline import Pipeline
from photonstream.reporting import reporter_from_env


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run":
        print("usage: report_runner.py run PIPELINE.yaml [--quiet]", file=sys.stderr)
        return 2
    config = load_pipeline(argv[1])
    end = Pipeline(config).run(progress=reporter_from_env())
    print(f"{config.stream.address}: {end.reason}; {end.events_sent} events sent")
    return 0 if end.reason == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
