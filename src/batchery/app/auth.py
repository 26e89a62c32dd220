"""API keys, as pure ASGI middleware: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

401 without a usable key, 403 with a wrong one. Probes stay open. Routes under /admin need the admin key,
and are refused outright when none is configured. Keys are compared in constant time (digests of equal
length, every configured key compared), and never logged: the key's id is a short digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from batchery import protocols
from batchery.app.scope import CLIENT
from batchery.config import Settings
from batchery.errors import BatcheryError, ConfigError
from batchery.metrics import Metrics

#: Longer credentials are refused unread: no configured key is that long.
MAX_KEY_BYTES = 1024
__all__ = ["CLIENT", "ApiKeys", "Auth", "Forbidden", "KeyRing", "Unauthorized"]
log = logging.getLogger("batchery.auth")


class Unauthorized(BatcheryError):
    """No API key, or one in a form batchery does not read."""

    status = 401
    code = "unauthorized"


class Forbidden(BatcheryError):
    """The API key is wrong, or is not the admin key an /admin route needs."""

    status = 403
    code = "forbidden"


class ApiKeys:
    """The configured keys as SHA-256 digests, each with its role ("user" or "admin") and a printable id."""

    def __init__(self, keys: Iterable[str], admin_key: str = "") -> None:
        self._entries: list[tuple[bytes, str, str]] = []
        # The admin key first: the first match decides the role, and the admin key listed among the user keys
        # too must still open /admin.
        for key, role in [*([(admin_key, "admin")] if admin_key else []), *((k, "user") for k in keys)]:
            digest = hashlib.sha256(key.encode()).digest()
            self._entries.append((digest, role, "key-" + digest.hex()[:12]))
        self.users = any(role == "user" for _, role, _ in self._entries)
        self.count = len(self._entries)
        self.admin = bool(admin_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        keys = [key.strip() for key in settings.api_keys.split(",") if key.strip()]
        if settings.api_keys_file:
            try:
                lines = Path(settings.api_keys_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read api_keys_file {settings.api_keys_file!r}: {exc.strerror}") from exc
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls(keys, settings.admin_api_key.strip())

    def check(self, presented: bytes) -> tuple[str, str] | None:
        """(role, key id) for a configured key, else None. Time does not depend on which key matched."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for known, role, key_id in self._entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = (role, key_id)
        return found


class KeyRing:
    """The keys in force: the configured ones, re-read when `api_keys_file` changes (rotation). One per app,
    shared by every `Auth` layer that serves it (the app's own, and the predict route's fast path), so a rotated
    key is revoked on every route at once."""

    def __init__(self, keys: ApiKeys, settings: Settings | None = None) -> None:
        self.keys = keys
        self._rotation = _Rotation(settings) if settings is not None and settings.api_keys_file else None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(ApiKeys.from_settings(settings), settings)

    def current(self) -> ApiKeys:
        if self._rotation is not None:
            self.keys = self._rotation.current(self.keys)
        return self.keys


class Auth:
    """Refuse requests without a valid key, except on `open_paths`; /admin routes need the admin key."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing | ApiKeys,
        open_paths: Iterable[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.ring = keys if isinstance(keys, KeyRing) else KeyRing(keys)
        self.open_paths = frozenset(open_paths)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        keys = self.ring.current()
        path: str = scope["path"]
        admin = path == "/admin" or path.startswith("/admin/")
        if not admin and (path in self.open_paths or not keys.users):
            await self.app(scope, receive, send)
            return
        try:
            scope[CLIENT] = self._authorize(keys, scope, admin)
        except BatcheryError as exc:
            if self.metrics is not None:
                self.metrics.rejected("", "unauthorized" if exc.status == 401 else "forbidden", 1)
            response = protocols.error_response(scope["path"], exc)  # OpenAI and KServe clients read their shape
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="batchery"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorize(self, keys: ApiKeys, scope: Scope, admin: bool) -> str:
        if admin and not keys.admin:
            raise Forbidden("admin routes are off: no admin key is configured. Set BATCHERY_ADMIN_API_KEY to use them")
        presented = _presented(scope["headers"])
        found = keys.check(presented)
        if found is None:
            raise Forbidden("the API key is not valid; check it, or ask the operator for one")
        role, key_id = found
        if admin and role != "admin":
            raise Forbidden("this route needs the admin key")
        return key_id


def _presented(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The key from `X-API-Key` or `Authorization: Bearer`; Unauthorized when there is none to read."""
    for name, value in headers:
        if name == b"x-api-key":
            key = value.strip()
        elif name == b"authorization":
            scheme, _, key = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                raise Unauthorized("use 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
            key = key.strip()
        else:
            continue
        if not key or len(key) > MAX_KEY_BYTES:
            raise Unauthorized(f"the API key is empty or longer than {MAX_KEY_BYTES} bytes")
        return key
    raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


class _Rotation:
    """Re-reads the keys file when its mtime or size changes (checked at most once a second), without a restart.

    Keys present in both the old and the new file stay valid throughout, so clients can move over gradually.
    A file that cannot be read, or that lists no key while keys were on, keeps the previous keys (and says so).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.api_keys_file)
        self._seen = self._stamp()
        self._next_check = 0.0

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def current(self, keys: ApiKeys) -> ApiKeys:
        now = time.monotonic()
        if now < self._next_check:
            return keys
        self._next_check = now + 1.0
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return keys
        self._seen = stamp
        try:
            fresh = ApiKeys.from_settings(self.settings)
        except ConfigError as exc:
            log.error("API keys not rotated, the previous keys stay valid: %s", exc.message)
            return keys
        if keys.users and not fresh.users:
            log.error("API keys not rotated: %s lists no key now, the previous keys stay valid", self.path)
            return keys
        log.info("API keys re-read from %s: %d key(s)", self.path, fresh.count)
        return fresh
