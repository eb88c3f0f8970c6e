"""Who may connect, and who may see which conversation.

Two layers (docs/security.md):

* **At the WebSocket handshake** (``AccessPolicy.check_ws``): the page's ``Origin`` must be this server,
  a localhost page, or listed in ``server.allowed_origins``; a token is required when the server listens
  beyond localhost (``server.require_token``), passed as ``?token=`` or ``Authorization: Bearer``. A
  refusal is an HTTP 401/403 with a text body that says what to do, before any WebSocket exists.
* **Per conversation** (``avatar.conversation.admission.admit``): ``ready`` hands each session a secret ``resume_key`` and each user id
  a secret ``user_key``. Resuming a session needs its key; getting a user's history needs the user's key.
  Only SHA-256 hashes of the keys are stored (avatar/conversation/memory.py), and they are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from avatar.conversation.admission import new_secret, secret_hash
from avatar.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "server_token"
MIN_TOKEN_CHARS = 12
REQUIRE_MODES = ("auto", "always", "never")


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
    retry_after: int | None = None  # seconds, for a 429 that says when to try again


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
        self.guesses = GuessLimiter()

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

    def check_request(self, path: str, headers, remote_address, *, ws: bool = True,
                      on_wrong=lambda **labels: None) -> Refusal | None:
        """``check_ws`` (or only the token with ``ws=False``), with duplicate headers refused and wrong
        tokens counted per client address (``GuessLimiter``): a guesser is told to wait, and each wrong
        token is logged and reported to ``on_wrong(path=...)`` (a metric)."""
        refusal = duplicate_header(headers)
        if refusal is not None:
            return refusal
        address = self.client_address(remote_address, headers)
        if self.required and (wait := self.guesses.wait_s(address)) > 0:
            return self.guesses.refusal(address, wait)
        refusal = self.check_ws(path, headers) if ws else self.check_token(path, headers)
        if refusal is not None and refusal.reason == "token" and self.presented_token(path, headers):
            count, wait = self.guesses.failed(address)
            on_wrong(path=urlsplit(path).path)
            log.warning("wrong access token from %s on %s (%d in a row%s)", address, urlsplit(path).path, count,
                        f"; its next token is checked in {wait:g} s" if wait else "")
        elif refusal is None and self.required:
            self.guesses.succeeded(address)
        return refusal

    def client_address(self, remote_address, headers) -> str:
        """The client's IP for per-client limits (the proxy's view with server.trust_forwarded_for)."""
        if self.trust_forwarded_for and headers is not None:
            forwarded = ",".join(headers.get_all("X-Forwarded-For"))  # several headers: one list, in order
            if forwarded:
                return forwarded.split(",")[-1].strip() or "?"
        if remote_address:
            return str(remote_address[0])
        return "?"


SINGLE_HEADERS = ("Host", "Origin", "Authorization")


def duplicate_header(headers) -> Refusal | None:
    """A request with two Host, Origin or Authorization headers is ambiguous (which one did a proxy
    check?): refuse it as a bad request."""
    for name in SINGLE_HEADERS:
        if len(headers.get_all(name)) > 1:
            return Refusal(400, "bad_request", f"avatar: the request has more than one {name} header; send "
                           "exactly one.\n")
    return None


class GuessLimiter:
    """Backoff on wrong tokens, per client address: after ``free`` wrong tokens, each further one makes
    the address wait ``base_s`` doubled per failure (up to ``max_s``) before its next token is even
    checked, so a guesser gets a few tries a minute instead of thousands a second. A right token clears
    the count. ``max_addresses`` bounds the memory an address-hopping guesser can cost."""

    def __init__(self, free: int = 5, base_s: float = 1.0, max_s: float = 60.0, forget_s: float = 900.0,
                 max_addresses: int = 10_000, clock=None):
        self.free, self.base_s, self.max_s, self.forget_s = free, base_s, max_s, forget_s
        self.max_addresses = max_addresses
        self._clock = clock or time.monotonic
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (wrong tokens, blocked until)

    def wait_s(self, address: str) -> float:
        """Seconds until ``address`` may try a token again (0: now)."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        left = entry[1] - self._clock()
        return left if left > 0 else 0.0

    def failed(self, address: str) -> tuple[int, float]:
        """Count a wrong token; returns (wrong tokens so far, seconds the address must now wait)."""
        now = self._clock()
        count, until = self._failures.pop(address, (0, now))
        if now - until > self.forget_s:
            count = 0  # a typo a quarter of an hour ago does not count against a new one
        count += 1
        wait = 0.0 if count <= self.free else min(self.max_s, self.base_s * 2 ** (count - self.free - 1))
        if len(self._failures) >= self.max_addresses:
            self._failures.pop(next(iter(self._failures)))  # the oldest entry
        self._failures[address] = (count, now + wait)
        return count, wait

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def refusal(self, address: str, wait: float) -> Refusal:
        seconds = max(1, round(wait + 0.49))
        return Refusal(429, "token_backoff", f"avatar: too many wrong access tokens from {address}; wait "
                       f"{seconds} s before trying again (tokens are not checked until then).\n", seconds)


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
