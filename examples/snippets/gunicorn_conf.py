"""A gunicorn config file for meterware's Prometheus metrics with several workers.

    export PROMETHEUS_MULTIPROC_DIR=/run/myapi/prometheus METERWARE_METRICS=1
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    gunicorn -c examples/snippets/gunicorn_conf.py -k uvicorn_worker.UvicornWorker \
        -w 4 -b 0.0.0.0:8000 --pythonpath examples/starlette_app app:app

`PROMETHEUS_MULTIPROC_DIR` must be in the environment gunicorn starts with (an empty
directory of its own): prometheus_client picks its multiprocess mode when imported.
"""

import glob
import os

from prometheus_client import multiprocess


def on_starting(server):
    """Empty the metrics directory before the workers start (files of a former run)."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """A worker exited: its gauges go; its counters stay in the totals."""
    multiprocess.mark_process_dead(worker.pid)
