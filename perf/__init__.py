"""greenbus's benchmark suite.

``python -m perf`` (or ``greenbus bench``) compares greenbus with the ways
Python programs pass messages today, in one process and across processes;
``python -m perf.load`` puts the hub under load and over time.  The layout:

* ``procs.py``: the child processes of every harness (start, ready line, stop);
* ``systems.py``, ``hub.py``: the systems under test, in one process and across
  processes (their helper processes run ``hub_worker.py``);
* ``metrics.py``: what ``python -m perf`` measures, the sizes, greenbus's targets;
* ``__main__.py``: its command line and interleaved run;
* ``load.py``: ``python -m perf.load``, whose client processes run ``load_worker.py``;
* ``report.py``: the JSON records, RESULTS.md, LOAD.md and the charts of both.
"""
