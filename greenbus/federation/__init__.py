"""Federation: buses in several processes (and machines) acting as one.

``greenbus.federate(bus, "redis://host:port/db")`` links a bus to Redis
pub/sub (the ``[redis]`` extra).  See ``docs/scaling.md`` for the topology,
the guarantees, and what an outage loses.
"""

from .envelope import Envelope, decode_envelope, encode_envelope
from .redis import Federation, FederationStatistics, federate, redis_glob

__all__ = [
    "Envelope",
    "Federation",
    "FederationStatistics",
    "decode_envelope",
    "encode_envelope",
    "federate",
    "redis_glob",
]
