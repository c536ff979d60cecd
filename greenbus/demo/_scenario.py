"""Shared by the two-thread scenarios: how many messages, and the printout.

Each scenario records, per message, how long ``emit`` held the emitting thread
and the round-trip time until the reply arrived, then calls :func:`report`.
With ``--json`` on the command line the figures are printed as one JSON
object instead, for ``greenbus demo``.
"""

from __future__ import annotations

import json
import statistics
import sys

__all__ = ["N", "report"]

#: Messages per run: thread1 emits data i = 0..N-1, 10 ms apart.
N = 10


def report(title: str, block_us: list[float], rtt_us: dict[int, float]) -> None:
    """Print the figures of one run on stdout.

    Args:
        title: what ran; the first line of the table.
        block_us: per message i, how long ``emit`` held the emitter, in µs.
        rtt_us: per message i that was answered, the round trip in µs; a
            message missing from it is shown as ``lost``.

    Without ``--json``: a title, one line per message and a median line.  With
    ``--json`` in ``sys.argv``: one JSON object ``{"title", "block_us",
    "rtt_us"}`` on one line (JSON turns the keys of ``rtt_us`` into strings).
    """
    if "--json" in sys.argv:
        print(json.dumps({"title": title, "block_us": block_us, "rtt_us": rtt_us}))
        return
    print(title)
    print(f"{'msg':>4}  {'emit held (µs)':>15}  {'round trip (µs)':>16}")
    for i, held in enumerate(block_us):
        rtt = rtt_us.get(i)
        shown = f"{rtt:16.1f}" if rtt is not None else f"{'lost':>16}"
        print(f"{i:>4}  {held:15.1f}  {shown}")
    if rtt_us:
        print(
            f"median: emit held {statistics.median(block_us):.1f} µs, "
            f"round trip {statistics.median(rtt_us.values()):.1f} µs; "
            f"{len(rtt_us)}/{len(block_us)} replies"
        )
