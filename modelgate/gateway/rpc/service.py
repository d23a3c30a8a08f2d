"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, on the same data
plane as HTTP (``gateway/dataplane.py``: versions, traffic policies and shadows, admission,
bundling, deadlines).

Every RPC goes through one wrapper, as every HTTP route goes through ``app._wrap``: the API
keys from the ``authorization`` metadata (``Bearer KEY``, the same keys as HTTP; the health
RPCs are open unless ``--protect-probes``, load and unload take admin keys when any is set),
domain errors mapped to gRPC status codes by the one table (``gateway/errors.py``) with the
message the HTTP answer carries (overload adds ``retry-after`` trailing metadata), and ModelInfer
counted in ``modelgate_grpc_requests_total`` by its gRPC code. A call's deadline is the gRPC
deadline when the client set one (tighter than ``parameters.timeout_ms`` or the model's), so
workers skip what the caller no longer waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelgate import __version__
from modelgate.core.errors import DeadlineExceeded, ModelgateError, Overloaded
from modelgate.core.settings import GatewaySettings
from modelgate.gateway import protocol
from modelgate.gateway.auth import check_bearer
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.errors import grpc_status_of
from modelgate.gateway.feedback import call_id
from modelgate.gateway.repository import CommandDone, index_rows, run_command
from modelgate.gateway.rpc import codec
from modelgate.gateway.rpc import grpc_predict_v2_pb2 as pb

log = logging.getLogger("modelgate.gateway")

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["binary_tensor_data", "model_repository"]

Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class InferenceService:
    """The RPCs, each a coroutine ``(request, context) -> response``."""

    def __init__(self, settings: GatewaySettings, plane: DataPlane) -> None:
        self.settings = settings
        self.plane = plane
        admin = tuple(k.encode() for k in settings.admin_api_keys)
        self.api_keys = tuple(k.encode() for k in settings.api_keys) + admin
        self.control_keys = admin or self.api_keys

    def handlers(self) -> grpc.GenericRpcHandler:
        probe = self.settings.protect_probes
        table: dict[str, tuple[Method, Any, bool | None]] = {
            # name: (method, request type, keys: True = API keys, None = admin keys if any,
            # False = open)
            "ServerLive": (self.server_live, pb.ServerLiveRequest, probe),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, probe),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, True),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, True),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, True),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, True),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, True),
            "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest, None),
            "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest,
                                      None),
        }
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, method, keys), request_deserializer=request_type.FromString,
                response_serializer=lambda message: message.SerializeToString())
            for name, (method, request_type, keys) in table.items()})

    def _wrap(self, name: str, method: Method, keys: bool | None) -> Method:
        needed = self.control_keys if keys is None else self.api_keys if keys else ()

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if needed:
                    check_bearer(_metadata(context, "authorization"), needed)
                return await method(request, context)
            except ModelgateError as e:
                if isinstance(e, Overloaded):
                    context.set_trailing_metadata((("retry-after", str(e.retry_after_s)),))
                context.set_code(grpc_status_of(e))
                context.set_details(str(e))
                return None
            except asyncio.CancelledError:
                raise  # the caller went away (or its deadline passed): nothing to answer
            except Exception as e:  # the same last resort the HTTP routes have
                log.exception("unexpected error in gRPC %s", name)
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details(f"internal error ({type(e).__name__}); it has been logged")
                return None

        return handle

    # ------------------------------------------------------------------ health, metadata

    async def server_live(self, request: pb.ServerLiveRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest,
                           context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def model_ready(self, request: pb.ModelReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        model = self.plane.resolve(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(model))

    async def server_metadata(self, request: pb.ServerMetadataRequest,
                              context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelgate", version=__version__,
                                         extensions=EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        model = self.plane.resolve(request.name, request.version or None)
        return codec.model_metadata(model, self.plane.models[model.name].state.ready())

    # ------------------------------------------------------------------ inference

    async def model_infer(self, request: pb.ModelInferRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        plane = self.plane
        served: tuple[str, str, str] | None = None
        code = grpc.StatusCode.OK
        try:
            # The model's traffic policy, as for HTTP; the sticky key from the metadata.
            metadata = {k: v if isinstance(v, str) else v.decode("latin-1")
                        for k, v in context.invocation_metadata() or ()}
            routed = plane.route(request.model_name, request.model_version or None, metadata)
            model = routed.version
            served = (model.name, model.version, routed.route)
            wire_request, typed = codec.parse_infer(request, model)
            deadline_ms = protocol.timeout_ms(wire_request.parameters, model,
                                              plane.settings.default_timeout_ms)
            remaining_s = context.time_remaining()
            if remaining_s is not None:
                if remaining_s <= 0:
                    raise DeadlineExceeded("the call's gRPC deadline passed before it was "
                                           "queued; give it a longer deadline")
                deadline_ms = max(1, min(deadline_ms, int(remaining_s * 1000)))
            # The call's id (the caller's, else a new one) is answered for feedback later.
            call = call_id(request.id or None, metadata.get("x-request-id"))
            store = plane.feedback.keep(model, call)
            reply = await plane.infer(model, wire_request, deadline_ms, store=store)
            if routed.shadow is not None:
                plane.mirror(model, routed.shadow, wire_request, reply)
            plane.feedback.record(model, store, reply)
            return codec.format_infer(model, reply, call, typed)
        except ModelgateError as e:
            code = grpc_status_of(e)
            raise
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller goes away or its deadline passes.
            remaining_s = context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining_s is not None and \
                remaining_s <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            if served is not None:
                plane.metrics.count_grpc_request(*served, code.name,
                                                 time.perf_counter() - started)

    # ------------------------------------------------------------------ repository

    async def repository_index(self, request: pb.RepositoryIndexRequest,
                               context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        rows = await asyncio.to_thread(index_rows, self.plane.settings.models_dir, self.plane,
                                       request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def _change(self, op: str, request: Any, context: grpc.aio.ServicerContext) -> str:
        # Triton's clients send the name in field 2 (here triton_model_name), KServe's in 1.
        name = request.triton_model_name or request.model_name
        parameters: dict[str, Any] = {}
        for key, value in request.parameters.items():
            choice = value.WhichOneof("parameter_choice")
            parameters[key] = getattr(value, choice) if choice is not None else None
        remaining_s = context.time_remaining()
        if remaining_s is not None and "timeout_ms" not in parameters:
            parameters["timeout_ms"] = max(1, int(remaining_s * 1000))
        outcome = await run_command(self.plane, op, name, parameters,
                                    _metadata(context, "authorization"))
        if outcome is not CommandDone.DONE:
            raise DeadlineExceeded(f"the {op} of {name!r} is still under way; follow it with "
                                   "RepositoryIndex")
        return name

    async def repository_load(self, request: pb.RepositoryModelLoadRequest,
                              context: grpc.aio.ServicerContext
                              ) -> pb.RepositoryModelLoadResponse:
        name = await self._change("load", request, context)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def repository_unload(self, request: pb.RepositoryModelUnloadRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.RepositoryModelUnloadResponse:
        name = await self._change("unload", request, context)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)
