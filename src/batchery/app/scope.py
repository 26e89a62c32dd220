"""Keys the middleware leaves in the ASGI scope for the layers inside it (no imports: anyone may read them)."""

#: The caller's API key id (a short digest, never the key), set by the auth middleware.
CLIENT = "batchery.client"
#: The request id, set by the telemetry middleware.
REQUEST_ID = "batchery.request_id"
#: The model name, for adapters that learn it from the body (not the path): metrics and access logs use it.
MODEL = "batchery.model"
#: The model version that computed this request's outputs, set once computed (the cache stores under it).
COMPUTED_VERSION = "batchery.computed_version"
#: Set when the client went away before its response (read mid-body): access logs and metrics record 499.
DISCONNECTED = "batchery.disconnected"
#: For an inference request being answered: what the HTTP protocol calls when the client hangs up before the
#: response has started (the server's dispatcher sets it; see `fastpath.FastDispatch`).
ON_HANGUP = "batchery.on_hangup"
