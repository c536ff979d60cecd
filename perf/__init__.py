"""greenbus's benchmark suite.

``python -m perf`` (or ``greenbus bench``) compares greenbus with the ways
Python programs pass messages today, in one process and across processes;
``python -m perf.load`` puts the hub under load and over time.  The layout:

* ``suite.toml``: what is declared, not computed (:data:`SUITE`): the sizes of
  each profile, each metric's systems and exactly what it times, what each
  system is, greenbus's targets, the reports' texts, the charts' titles and colours;
* ``procs.py``: the child processes of every harness (start, ready line, stop);
* ``systems.py``, ``hub.py``: the systems under test, in one process and across
  processes (``hub.py`` is also their helper processes);
* ``metrics.py``: how each metric measures, and the targets;
* ``__main__.py``: its command line and interleaved run;
* ``load.py``: ``python -m perf.load``, whose client processes run ``load_worker.py``;
* ``report.py``: the JSON records, RESULTS.md, LOAD.md and the charts of both.
"""

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

#: ``suite.toml``, parsed.
SUITE: dict[str, Any] = tomllib.loads((Path(__file__).parent / "suite.toml").read_text("utf-8"))
