"""greenbus's benchmark suite.

Compares greenbus with the ways Python programs pass messages today -- the
classic two-thread pyee scenario, pyee inline and on a thread pool, OS
threads with ``queue.Queue``, greenlets with ``gevent.queue``, and blinker --
in one process, interleaving the systems round by round.

Run it from the repository root with ``python -m perf`` (or ``greenbus
bench``); ``python -m perf --help`` lists the options.  The layout:

* ``systems.py``: one adapter per system under test;
* ``metrics.py``: what is measured, the sizes, and greenbus's targets;
* ``report.py``: the JSON record, ``RESULTS.md`` and the charts;
* ``__main__.py``: the command line and the interleaved run.
"""
