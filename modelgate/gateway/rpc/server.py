"""The gRPC server of a gateway process: ``grpc.aio`` in the same event loop as uvicorn, on
the same data plane, listening on ``--grpc-port`` (8081 by default; 0: none).

It binds its own port (gRPC cannot serve on a socket handed down by ``modelgate up``). With
``reuse_port`` (several gateway processes on one machine) every process binds the port with
SO_REUSEPORT and the kernel spreads connections across them; otherwise a port in use is an
error at start. Messages are at most ``--max-body-bytes`` each, like HTTP bodies; past
``--max-inflight`` calls at once a new call gets RESOURCE_EXHAUSTED from gRPC itself.
"""

from __future__ import annotations

import logging

import grpc

from modelgate.core.settings import GatewaySettings
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.rpc.service import InferenceService

log = logging.getLogger("modelgate.gateway")

STOP_GRACE_S = 5.0


class GrpcBindError(RuntimeError):
    """The gRPC port cannot be bound; the message says what to do."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(settings: GatewaySettings, plane: DataPlane) -> grpc.aio.Server:
    """A started server for ``plane``; raises GrpcBindError if its port cannot be bound."""
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 1 if settings.reuse_port else 0)],
        maximum_concurrent_rpcs=settings.max_inflight)
    server.add_generic_rpc_handlers((InferenceService(settings, plane).handlers(),))
    where = address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as e:
        raise GrpcBindError(f"cannot listen for gRPC on {where} ({e}); stop what uses it or "
                            "pass --grpc-port (0 turns gRPC off)") from e
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s", where)
    return server


async def stop(server: grpc.aio.Server) -> None:
    """New calls are refused at once; calls in flight get up to STOP_GRACE_S to finish."""
    await server.stop(STOP_GRACE_S)
