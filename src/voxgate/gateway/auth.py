"""Identity: who is on the other end of a request or a WebSocket.

Modes (`VOXGATE_AUTH`):
- `none`: every connection is its own anonymous user, allowed only on loopback.
- `jwt`: HS256 tokens signed with `VOXGATE_JWT_SECRET`; `sub` is the user id and `exp` is
  required. Single-use session tokens minted by `POST /api/realtime/session` are accepted too.

A token may arrive as `Authorization: Bearer`, as `?token=`, or as the WebSocket subprotocol
`voxgate.bearer.<token>` (browsers cannot set headers on a WebSocket).

Session tokens are for `/ws` only: HTTP routes refuse them, so a leaked page-held token cannot
mint its own successor (an endless chain past its 60 s life) or reach the admin routes.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import secrets
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from voxgate.config import Settings

SUBPROTOCOL = "voxgate.v1"
BEARER_SUBPROTOCOL_PREFIX = "voxgate.bearer."
SESSION_TOKEN_PREFIX = "vxs_"
#: Longest user id we accept from a JWT `sub`: it lands in logs, metrics labels and the store.
MAX_USER_ID_CHARS = 256
#: Clock skew tolerated on `exp`/`nbf`/`iat`, in seconds.
JWT_LEEWAY_S = 5


_USER_ID_RULE = f"a user id is 1-{MAX_USER_ID_CHARS} printable characters"

#: HS256 keys shorter than the hash (32 bytes) can be brute-forced offline from one token.
MIN_JWT_SECRET_BYTES = 32
#: Fewer distinct bytes than this is a pattern, not a random secret (`ssss…`, `abcabc…`).
MIN_JWT_SECRET_DISTINCT = 8
_MAKE_A_SECRET = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"


def weak_jwt_secret(secret: str) -> str | None:
    """Why `secret` must not sign tokens, or None. Anyone who guesses it signs admin tokens."""
    data = secret.encode()
    if len(data) < MIN_JWT_SECRET_BYTES:
        return (
            f"VOXGATE_JWT_SECRET is too short ({len(data)} bytes; at least "
            f"{MIN_JWT_SECRET_BYTES} random bytes are needed, or tokens can be forged): "
            + _MAKE_A_SECRET
        )
    if len(set(data)) < MIN_JWT_SECRET_DISTINCT:
        return (
            "VOXGATE_JWT_SECRET is a repeated pattern, not a random secret (tokens signed with it "
            "can be forged): " + _MAKE_A_SECRET
        )
    return None


class ConfigError(ValueError):
    """Settings the gateway refuses to run with; the message says how to fix them."""


def _valid_user_id(value: object) -> bool:
    # Printable: a newline in a user id would forge log lines.
    return isinstance(value, str) and 0 < len(value) <= MAX_USER_ID_CHARS and value.isprintable()


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    anonymous: bool = False
    is_admin: bool = False
    #: Set when the caller used a single-use session token (it names the reserved session id).
    session_id: str | None = None
    #: The engines this user may use (the JWT's `engines` claim), within the server's own
    #: allowlist; None: every engine the server allows.
    engines: tuple[str, ...] | None = None
    #: The models this user may use (the JWT's `models` claim), within the server's own
    #: allowlist (VOXGATE_ALLOWED_MODELS); None: every model the server allows.
    models: tuple[str, ...] | None = None


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: Session tokens this task took from the shared state (`SessionTokens.claim`): token ->
#: its payload, or None when no node had it. Per task, so concurrent handshakes never mix.
_claimed: ContextVar[dict[str, str | None] | None] = ContextVar("voxgate_claimed", default=None)


class SessionTokens:
    """Single-use, short-lived tokens for `/ws`.

    Why not JWTs: a session token must be usable once, which needs server-side state anyway;
    an opaque random string keeps that state the only source of truth.

    One process keeps them in its memory (`mint`, `redeem`). With a shared state backend
    (`shared`, set by the gateway when `VOXGATE_REDIS_URL` is), they live there instead:
    `mint_shared` stores one for every node, and a handshake first `claim`s its token (taken
    from the store in one step, so exactly one connection across all nodes wins it); the
    synchronous `redeem` then reads what that claim found.
    """

    def __init__(self, ttl_s: int = 60) -> None:
        self.ttl_s = ttl_s
        self._tokens: dict[str, tuple[Identity, float]] = {}
        #: The shared state holding tokens across processes; None: this process's memory.
        self.shared: Any = None

    def mint(self, identity: Identity) -> tuple[str, str, int]:
        """-> (token, session_id, expires_at epoch seconds), kept in this process."""
        self._expire()
        token, bound, expires_at = self._new(identity)
        self._tokens[token] = (bound, expires_at)
        return token, bound.session_id or "", int(expires_at)

    async def mint_shared(self, identity: Identity) -> tuple[str, str, int]:
        """`mint`, in the shared state when there is one (raises `SharedUnavailable`)."""
        if self.shared is None:
            return self.mint(identity)
        token, bound, expires_at = self._new(identity)
        payload = json.dumps({"identity": dataclasses.asdict(bound), "expiresAt": expires_at})
        await self.shared.put_token(token, payload, self.ttl_s)
        return token, bound.session_id or "", int(expires_at)

    def _new(self, identity: Identity) -> tuple[str, Identity, float]:
        token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        bound = dataclasses.replace(identity, session_id=uuid.uuid4().hex)
        return token, bound, time.time() + self.ttl_s

    async def claim(self, token: str) -> None:
        """Take `token` from the shared state for this handshake (no-op without one)."""
        if self.shared is None:
            return
        claimed = dict(_claimed.get() or {})
        claimed[token] = await self.shared.take_token(token)
        _claimed.set(claimed)

    def __len__(self) -> int:
        return len(self._tokens)

    def redeem(self, token: str) -> Identity:
        if self.shared is not None:
            payload = (_claimed.get() or {}).pop(token, None)
            entry = _from_payload(payload) if payload else None
        else:
            entry = self._tokens.pop(token, None)  # pop: a second use finds nothing
        if entry is None:
            raise AuthError("the session token is unknown or was already used; mint a new one")
        identity, expires_at = entry
        if time.time() > expires_at:
            raise AuthError("the session token has expired; mint a new one")
        return identity

    def _expire(self) -> None:
        now = time.time()
        for token in [t for t, (_, exp) in self._tokens.items() if exp < now]:
            del self._tokens[token]


def _from_payload(payload: str) -> tuple[Identity, float] | None:
    try:
        data = json.loads(payload)
        fields = data["identity"]
        for name in ("engines", "models"):
            if fields.get(name) is not None:
                fields[name] = tuple(fields[name])
        return Identity(**fields), float(data["expiresAt"])
    except (ValueError, KeyError, TypeError):
        return None


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.auth == "jwt" and settings.jwt_secret is not None:
            if (weak := weak_jwt_secret(settings.jwt_secret.get_secret_value())) is not None:
                raise ConfigError(weak)
        self.settings = settings
        self.session_tokens = SessionTokens(settings.session_token_ttl_s)
        self._anon_counter = 0

    @property
    def enabled(self) -> bool:
        return self.settings.auth != "none"

    def anonymous(self) -> Identity:
        self._anon_counter += 1
        return Identity(user_id=f"anon-{uuid.uuid4().hex[:12]}", anonymous=True, is_admin=True)

    def verify_jwt(self, token: str) -> Identity:
        secret = self.settings.jwt_secret
        if secret is None or not secret.get_secret_value():
            raise AuthError("server misconfigured: VOXGATE_JWT_SECRET is not set")
        try:
            claims = jwt.decode(
                token,
                secret.get_secret_value(),
                algorithms=["HS256"],  # only HS256: `none` and RS/ES confusion are refused
                options={"require": ["exp", "sub"]},
                leeway=JWT_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the required '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("the token's algorithm is not allowed (HS256 only)") from None
        except jwt.InvalidTokenError:
            raise AuthError("the token is invalid (bad signature or malformed)") from None
        sub = claims["sub"]
        if not _valid_user_id(sub):
            raise AuthError(f"the token's 'sub' claim is not valid: {_USER_ID_RULE}")
        # `is True`: a claim of "false" (a non-empty string) must not make anyone an admin.
        is_admin = claims.get("admin") is True or sub in self.settings.admin_users
        return Identity(
            user_id=sub,
            is_admin=is_admin,
            engines=_names_claim(claims, "engines", "engine"),
            models=_names_claim(claims, "models", "model"),
        )

    def verify_token(self, token: str, *, allow_session_token: bool = True) -> Identity:
        if token.startswith(SESSION_TOKEN_PREFIX):
            if not allow_session_token:
                raise AuthError(
                    "a session token (vxs_...) only opens /ws; HTTP routes need the JWT it was "
                    "minted with"
                )
            return self.session_tokens.redeem(token)
        return self.verify_jwt(token)

    def mint_jwt(
        self, user_id: str, ttl_s: int = 3600, admin: bool = False,
        engines: list[str] | None = None,
        models: list[str] | None = None,
    ) -> str:
        secret = self.settings.jwt_secret
        if secret is None or not secret.get_secret_value():
            raise AuthError("VOXGATE_JWT_SECRET is not set")
        if (weak := weak_jwt_secret(secret.get_secret_value())) is not None:
            raise AuthError(weak)
        if ttl_s <= 0:
            raise AuthError(f"the token lifetime must be positive, got {ttl_s} s")
        if not _valid_user_id(user_id):
            raise AuthError(_USER_ID_RULE)
        claims: dict[str, object] = {"sub": user_id, "iat": int(time.time()), "exp": int(time.time()) + ttl_s}
        if admin:
            claims["admin"] = True
        if engines:
            claims["engines"] = list(engines)
        if models:
            claims["models"] = list(models)
        return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")

    def authenticate(
        self, conn: HTTPConnection, *, allow_session_token: bool = True
    ) -> tuple[Identity, str | None]:
        """Identify an HTTP request or a WebSocket handshake.

        Returns the identity and, for a WebSocket, the subprotocol to select (or None).
        Raises `AuthError` with a sentence for the client.

        With auth off any token is ignored, except that a live session token is still redeemed
        on `/ws`: the session then gets the `sessionId` the token endpoint promised, and a page
        written for `VOXGATE_AUTH=jwt` behaves the same on a loopback development server.
        """
        token, subprotocol = extract_token(conn)
        if not self.enabled:
            if allow_session_token and token and token.startswith(SESSION_TOKEN_PREFIX):
                try:
                    return self.session_tokens.redeem(token), subprotocol
                except AuthError:
                    pass  # auth is off: an unknown or used token is simply ignored
            return self.anonymous(), subprotocol
        if not token:
            raise AuthError(
                "authentication required: send a token as 'Authorization: Bearer <token>', "
                "'?token=', or the 'voxgate.bearer.<token>' subprotocol"
            )
        return self.verify_token(token, allow_session_token=allow_session_token), subprotocol


def extract_token(conn: HTTPConnection) -> tuple[str | None, str | None]:
    """-> (token or None, subprotocol to select or None)."""
    token: str | None = None
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip() or None
    if token is None:
        token = conn.query_params.get("token") or None
    offered = [
        p.strip()
        for p in conn.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    subprotocol: str | None = None
    bearer = next((p for p in offered if p.startswith(BEARER_SUBPROTOCOL_PREFIX)), None)
    if bearer and token is None:
        token = bearer[len(BEARER_SUBPROTOCOL_PREFIX) :] or None
    if SUBPROTOCOL in offered:
        subprotocol = SUBPROTOCOL  # never echo the bearer token back
    elif bearer:
        subprotocol = bearer  # the only one offered: a browser needs one selected
    return token, subprotocol


def current_identity(request: Request) -> Identity:
    """FastAPI dependency for HTTP routes: 401 with a sentence when auth fails."""
    authenticator: Authenticator = request.app.state.authenticator
    try:
        identity, _ = authenticator.authenticate(request, allow_session_token=False)
    except AuthError as exc:
        raise HTTPException(
            status_code=401, detail=exc.message, headers={"WWW-Authenticate": "Bearer"}
        ) from None
    return identity


def admin_identity(request: Request) -> Identity:
    """FastAPI dependency for admin routes (any caller when auth is off)."""
    identity = current_identity(request)
    if not identity.is_admin:
        raise HTTPException(status_code=403, detail="this route is for administrators")
    return identity


def operations_reader(request: Request) -> Identity | None:
    """FastAPI dependency for the operational routes (`/metrics`, `/api/realtime/metrics`,
    `/ws/status`): with auth on, an admin JWT or `VOXGATE_METRICS_TOKEN` (what a Prometheus
    scraper holds); they show session counts and error codes, which are not for every user."""
    authenticator: Authenticator = request.app.state.authenticator
    if not authenticator.enabled:
        return None
    scrape = authenticator.settings.metrics_token
    header = request.headers.get("authorization", "")
    if scrape is not None and header[:7].lower() == "bearer ":
        presented = header[7:].strip().encode()
        if hmac.compare_digest(presented, scrape.get_secret_value().encode()):
            return None
    return admin_identity(request)


def _names_claim(claims: dict[str, Any], claim: str, noun: str) -> tuple[str, ...] | None:
    """An optional list claim (`engines`, `models`): the names this user may pick.

    A malformed claim refuses the token rather than being ignored: ignoring it would hand the
    user every engine or model, the opposite of what its issuer meant.
    """
    if claim not in claims:
        return None
    value = claims[claim]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AuthError(f"the token's '{claim}' claim must be a list of {noun} names")
    return tuple(value)
