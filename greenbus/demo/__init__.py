"""The two-thread scenarios that ``greenbus demo`` runs side by side.

Each is a runnable module, shipped with greenbus so that the demo works from
an installed wheel:

* ``python -m greenbus.demo.threads_pyee``: the classic pattern, two OS
  threads sharing a pyee ``EventEmitter``, thread2 polling a queue;
* ``python -m greenbus.demo.pyee_dropin``: the same code with one import
  changed, to ``greenbus.compat.EventEmitter``;
* ``python -m greenbus.demo.threads_greenbus``: the same two threads written
  for greenbus, gevent-patched, each message pushed to thread2.

Each prints one line per message (how long ``emit`` held thread1, and the
round trip until the reply came back) and a median; with ``--json`` it prints
the figures as one JSON object instead (see :mod:`greenbus.demo._scenario`).

This package imports nothing: ``python -m greenbus.demo.threads_greenbus``
imports it before the scenario can monkey-patch.
"""

from __future__ import annotations

__all__ = ["SCENARIOS"]

#: The scenarios, in the demo's column order: (module under greenbus.demo, heading).
SCENARIOS: tuple[tuple[str, str], ...] = (
    ("threads_pyee", "pyee, OS threads"),
    ("pyee_dropin", "greenbus.compat drop-in"),
    ("threads_greenbus", "greenbus, greenlets"),
)
