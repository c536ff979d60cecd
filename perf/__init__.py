"""greenbus's benchmark suite.

Compares greenbus with the ways Python programs pass messages today -- the
classic two-thread pyee scenario, pyee inline and on a thread pool, OS
threads with ``queue.Queue``, greenlets with ``gevent.queue``, and blinker --
in one process, interleaving the systems round by round.  Its WebSocket hub
is measured across processes, beside Redis pub/sub and a raw TCP echo; its
Redis federation (two processes with federated buses), beside raw redis-py
pub/sub between two processes.

Run it from the repository root with ``python -m perf`` (or ``greenbus
bench``); ``python -m perf --help`` lists the options.  The layout:

* ``systems.py``: one adapter per in-process system under test;
* ``hub.py``: the systems across processes (greenbus's WebSocket hub, Redis
  pub/sub, the federation through Redis, a raw TCP echo), whose parties run
  in ``hub_worker.py`` processes;
* ``metrics.py``: what is measured, the sizes, and greenbus's targets;
* ``report.py``: the JSON record, ``RESULTS.md`` and the charts;
* ``__main__.py``: the command line and the interleaved run.
"""
