"""Bearer-token authentication as a server interceptor.

Every call must carry the metadata `authorization: Bearer <token>`; others end with UNAUTHENTICATED before
reaching the servicer. Health checks are exempt, so that load balancers and orchestrators can probe the
server without the secret.
"""

from __future__ import annotations

import hmac

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)  # methods callable without a token


def _reject_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED."""

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, on_reject=None):
        if not token:
            raise ValueError("empty auth token")
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject  # called with the method name of every rejected call

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if given is None:
            message = "missing 'authorization: Bearer <token>' metadata"
        elif hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return handler
        else:
            message = "invalid bearer token"
        if self._on_reject is not None:
            self._on_reject(method)
        return _reject_handler(handler, message)
