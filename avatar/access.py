"""Who may connect, and who may see which conversation.

Two layers (docs/security.md):

* **At the WebSocket handshake** (``AccessPolicy.check_ws``): the page's ``Origin`` must be this server,
  a localhost page, or listed in ``server.allowed_origins``; a token is required when the server listens
  beyond localhost (``server.require_token``), passed as ``?token=`` or ``Authorization: Bearer``. A
  refusal is an HTTP 401/403 with a text body that says what to do, before any WebSocket exists.
* **Per conversation** (``admit``): ``ready`` hands each session a secret ``resume_key`` and each user id
  a secret ``user_key``. Resuming a session needs its key; getting a user's history needs the user's key.
  Only SHA-256 hashes of the keys are stored (avatar/memory.py), and they are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from avatar.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "server_token"
MIN_TOKEN_CHARS = 12
REQUIRE_MODES = ("auto", "always", "never")


# -- secrets ---------------------------------------------------------------------------------------------
def new_secret() -> str:
    """192 random bits, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str | None, stored_hash: str | None) -> bool:
    if not secret or not stored_hash:
        return False
    return hmac.compare_digest(secret_hash(secret), stored_hash)


# -- addresses -------------------------------------------------------------------------------------------
def is_loopback_host(host: str | None) -> bool:
    """True for localhost names and loopback addresses ('' and 0.0.0.0 listen everywhere: False)."""
    if not host:
        return False
    host = host.strip().lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> str:
    """'example.com:8765' / '[::1]:8765' / '::1' -> the host part, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _origin_authority(origin: str) -> tuple[str, str] | None:
    """'https://Example.com:443' -> ('https', 'example.com:443'); None when it is not a URL origin."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.scheme, parts.netloc.lower()


def _same_authority(scheme: str, a: str, b: str) -> bool:
    """Compare host:port strings, treating the scheme's default port as implied."""
    default = ":443" if scheme == "https" else ":80"
    return a.removesuffix(default) == b.removesuffix(default)


@dataclass
class Refusal:
    status: int  # HTTP status of the handshake answer
    reason: str  # short, for logs and metrics: "token", "origin", "host", "capacity", ...
    body: str  # what the client (or the person behind it) should do


# -- the handshake -----------------------------------------------------------------------------------------
class AccessPolicy:
    def __init__(self, server_cfg, *, bind_host: str, data_dir: Path | None = None,
                 environ: dict | None = None):
        environ = os.environ if environ is None else environ
        mode = server_cfg.require_token
        if mode not in REQUIRE_MODES:
            raise ConfigError(f"server.require_token must be one of {', '.join(REQUIRE_MODES)}, got {mode!r}")
        tokens = [t for t in server_cfg.tokens]
        tokens += [t.strip() for t in environ.get("AVATAR_TOKENS", "").split(",") if t.strip()]
        for token in tokens:
            if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isprintable() \
                    or any(c.isspace() for c in token):
                raise ConfigError(f"every token in server.tokens / AVATAR_TOKENS must be at least {MIN_TOKEN_CHARS} "
                                  "printable characters without spaces (make one with: python -c "
                                  "'import secrets; print(secrets.token_urlsafe(24))')")
        self.bind_host = bind_host
        self.loopback = is_loopback_host(bind_host)
        self.required = mode == "always" or (mode == "auto" and not self.loopback)
        self.generated: str | None = None
        if self.required and not tokens:
            self.generated = load_or_create_token(data_dir)
            tokens = [self.generated]
        self._token_hashes = [secret_hash(t) for t in tokens] if self.required else []
        origins = []
        for origin in server_cfg.allowed_origins:
            if origin.strip() in ("*", "null"):
                origins.append(origin.strip())
                continue
            parsed = _origin_authority(origin)
            if parsed is None:
                raise ConfigError(f"server.allowed_origins: {origin!r} is not an origin like https://example.com")
            origins.append(f"{parsed[0]}://{parsed[1]}")
        self.allowed_origins = origins
        self.trust_forwarded_for = bool(getattr(server_cfg, "trust_forwarded_for", False))

    # -- what the operator sees -----------------------------------------------------------------------
    def page_url(self, host: str, port: int) -> str:
        url = f"http://{host}:{port}/"
        if self.generated:
            url += f"?token={self.generated}"
        return url

    def describe(self) -> str:
        if not self.required:
            return "no token needed (listening on localhost only)" if self.loopback else \
                "WARNING: no token needed although the server listens beyond localhost (server.require_token=never)"
        if self.generated:
            return "a token is needed: it is in the URL above (kept in the data directory's server_token file)"
        return "a token from server.tokens / AVATAR_TOKENS is needed: add ?token=TOKEN to the page URL"

    # -- checks ---------------------------------------------------------------------------------------
    @staticmethod
    def presented_token(path: str, headers) -> str | None:
        query = parse_qs(urlsplit(path).query)
        if query.get("token"):
            return query["token"][0]
        auth = headers.get("Authorization", "") if headers is not None else ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def token_ok(self, path: str, headers) -> bool:
        if not self.required:
            return True
        token = self.presented_token(path, headers)
        if not token:
            return False
        digest = secret_hash(token)
        ok = False
        for known in self._token_hashes:  # no early exit: the time does not depend on which one matched
            ok |= hmac.compare_digest(digest, known)
        return ok

    def check_token(self, path: str, headers) -> Refusal | None:
        if self.token_ok(path, headers):
            return None
        if self.presented_token(path, headers):
            return Refusal(401, "token", "avatar: this access token is not valid on this server (it may have "
                           "been rotated). Ask the operator for the current address with ?token=..., then "
                           "reload the page.\n")
        return Refusal(401, "token", "avatar: this server needs an access token. Open the address that "
                       "`avatar serve` printed (it ends in ?token=...), or add ?token=TOKEN to the page or "
                       "WebSocket URL (programs may send 'Authorization: Bearer TOKEN' instead).\n")

    def check_origin(self, headers) -> Refusal | None:
        origin = headers.get("Origin")
        if origin is None:  # not a browser: the token (when required) is the check
            return None
        if "*" in self.allowed_origins:
            return None
        if origin.strip() == "null":
            if "null" in self.allowed_origins:
                return None
            return Refusal(403, "origin", "avatar: pages without an origin (files, sandboxed frames) may not "
                           "connect. Serve the page over http(s), or add \"null\" to server.allowed_origins.\n")
        parsed = _origin_authority(origin)
        if parsed is None:
            return Refusal(403, "origin", f"avatar: the Origin header {origin!r} is not valid.\n")
        scheme, authority = parsed
        host = headers.get("Host", "").strip().lower()
        if host and _same_authority(scheme, authority, host):
            return None  # the page this server served
        if is_loopback_host(_split_host(authority)):
            return None  # a page on this machine
        if f"{scheme}://{authority}" in self.allowed_origins:
            return None
        return Refusal(403, "origin", f"avatar: pages from {scheme}://{authority} may not connect to this "
                       "server. Open the page this server serves, or ask the operator to add "
                       f"\"{scheme}://{authority}\" to server.allowed_origins.\n")

    def check_host(self, headers) -> Refusal | None:
        """A localhost server without a token only answers to localhost names: a web page that re-points
        its own domain to 127.0.0.1 (DNS rebinding) is then refused."""
        if self.required or not self.loopback:
            return None
        host = _split_host(headers.get("Host", "") or "localhost")
        if is_loopback_host(host):
            return None
        if any(_split_host(urlsplit(o).netloc) == host for o in self.allowed_origins if "://" in o):
            return None
        return Refusal(403, "host", f"avatar: this server listens on localhost and is addressed as {host!r}; "
                       "open it as http://localhost:PORT/ (or run it with a token: server.require_token).\n")

    def check_ws(self, path: str, headers) -> Refusal | None:
        return self.check_host(headers) or self.check_origin(headers) or self.check_token(path, headers)

    def client_address(self, remote_address, headers) -> str:
        """The client's IP for per-client limits (the proxy's view with server.trust_forwarded_for)."""
        if self.trust_forwarded_for and headers is not None:
            forwarded = headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[-1].strip() or "?"
        if remote_address:
            return str(remote_address[0])
        return "?"


def load_or_create_token(data_dir: Path | None) -> str:
    """The generated token is kept (mode 0600) so that a kiosk's URL survives restarts; delete the file
    to rotate it."""
    if data_dir is None:
        return new_secret()
    path = Path(data_dir) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= MIN_TOKEN_CHARS:
            return token
    except OSError:
        pass
    token = new_secret()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    except OSError as exc:
        log.warning("could not keep the generated token in %s (%s); it changes at each start", path, exc)
    return token


# -- conversations ---------------------------------------------------------------------------------------
@dataclass
class Admission:
    """What a ``hello`` is granted."""

    session_id: str
    user_id: str | None
    resumed: bool
    resume_key: str
    user_key: str | None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (code, message) to send before ready


def admit(store, hello: dict) -> Admission:
    """Decide which session and whose history a ``hello`` gets. Without the right key a client gets a new,
    empty conversation and an error that says why; it never learns whether the id exists."""
    errors: list[tuple[str, str]] = []
    user_id = hello.get("user_id")
    user_key = None
    if user_id is not None:
        stored = store.user_key_hash(user_id)
        if stored is None:
            user_key = new_secret()
            if not store.add_user(user_id, secret_hash(user_key)):  # registered meanwhile by another client
                stored, user_key = store.user_key_hash(user_id), None
        if stored is not None:
            if secret_matches(hello.get("user_key"), stored):
                user_key = hello["user_key"]
            else:
                errors.append(("bad_user_key", f"user {user_id!r} needs the user_key that this server gave in "
                               "the 'ready' message of that user's first session; this conversation goes on "
                               "without that user's history"))
                user_id = None
    session_id = hello.get("session_id")
    resumed = False
    resume_key = hello.get("resume_key")
    if session_id is not None:
        if secret_matches(resume_key, store.session_key_hash(session_id)):
            resumed = True
            user_id = user_id or store.session_user(session_id)
        else:
            errors.append(("unknown_session", f"session {session_id!r} is unknown to this server or its "
                           "resume_key is wrong (its history may have been deleted); a new conversation was "
                           "started"))
            session_id = None
    if session_id is None:
        resume_key = new_secret()
        session_id = store.create_session(user_id, None, secret_hash(resume_key))
    return Admission(session_id, user_id, resumed, resume_key, user_key, errors)
