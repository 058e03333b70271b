"""Tell kafka-python's dropped sockets apart from ours, so that only theirs are forgiven.

kafka-python 3.0.12's network layer (``kafka/net``) drops a socket without closing it on
several paths: a refused connect, a connect or handshake cut short when a client closes or a
broker goes away (a broker restarted by a chaos test, a consumer closed while it was still
connecting to the next node). The garbage collector closes the socket later, in whatever test
runs then, and its ResourceWarning fails that test. Every socket kafka-python makes here is a
`KafkaPythonSocket`, whose repr names this module, and pyproject's ``filterwarnings`` ignores an
unclosed socket of that class only: a socket cdc or a test leaks (metrics server, registry
client) is still an error.
"""

from __future__ import annotations

import socket

from kafka.net.inet import KafkaNetSocket


class KafkaPythonSocket(socket.socket):
    """A socket kafka-python made (see the module docstring)."""


def _socket(
    self: KafkaNetSocket,
    family: int = socket.AF_UNSPEC,
    sock_type: int = socket.SOCK_STREAM,
    proto: int = socket.IPPROTO_TCP,
) -> socket.socket:
    return KafkaPythonSocket(family, sock_type, proto)


KafkaNetSocket.socket = _socket
