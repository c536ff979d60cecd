"""gevent transports: the WebSocket hub (server), its Python client, the WSGI adapter.

Each transport is a thin driver around the sans-I/O :mod:`greenbus.protocol`
and the ``websockets`` library's sans-I/O protocol objects:

* :mod:`.connection`: one WebSocket connection: a reader, and a writer while there is work;
* :mod:`.peer`: one remote peer attached to a bus (protocol events -> bus calls);
* :mod:`.server`: the hub (``greenbus.serve``), with ``/health`` and ``/metrics``;
* :mod:`.client`: ``greenbus.connect``, a :class:`RemoteBus`.
"""

from .client import RemoteBus, connect
from .server import HubConfig, HubServer, serve

__all__ = ["HubConfig", "HubServer", "RemoteBus", "connect", "serve"]
