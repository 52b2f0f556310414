"""Registry authentication: challenges, credentials and bearer tokens.

Follows Docker's token authentication (distribution ``docs/spec/auth/token.md``):
a 401 carries ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
the client asks the realm for a token (anonymously, or with Basic credentials
and ``offline_token=true``), then repeats the request with
``Authorization: Bearer <token>``. ``Basic`` challenges are answered with the
credentials directly. Credentials come from the caller or from Docker's
``config.json`` (``auths.<host>.auth``).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from dockyard.errors import InvalidArgument, Unsupported

# Docker Hub's registry is reached at registry-1.docker.io, but logins are
# stored under the old index address.
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"

# Tokens with no expires_in live 60 seconds (token.md, "Token Response Fields").
_DEFAULT_TOKEN_LIFETIME = 60
_EXPIRY_MARGIN = 5


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 challenges).

    Quoted values may hold commas (``scope="repository:a:pull,push"``).
    """
    challenges: list[Challenge] = []
    for value in values:
        i, n = 0, len(value)
        current: Challenge | None = None
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            start = i
            while i < n and value[i] not in " \t,=":
                i += 1
            token = value[start:i]
            if not token:
                break
            j = i
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == "=" and current is not None:
                i = j + 1
                while i < n and value[i] in " \t":
                    i += 1
                if i < n and value[i] == '"':
                    i += 1
                    chars: list[str] = []
                    while i < n and value[i] != '"':
                        if value[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(value[i])
                        i += 1
                    i += 1
                    param = "".join(chars)
                else:
                    start = i
                    while i < n and value[i] not in " \t,":
                        i += 1
                    param = value[start:i]
                current.params[token.lower()] = param
            else:
                current = Challenge(token.lower(), {})
                challenges.append(current)
    return challenges


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    # An OAuth2 refresh token saved by ``docker login`` (``identitytoken``).
    identity_token: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def config_key(host: str) -> str:
    return DOCKER_HUB_CONFIG_KEY if host in DOCKER_HUB_HOSTS else host


def _normalize_key(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``, as Docker matches ``auths`` keys."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def load_credentials(host: str, config_path: str | None) -> Credentials | None:
    """Credentials for ``host`` from a Docker ``config.json``, or None.

    Credential helpers (``credHelpers``, ``credsStore``) are not supported yet:
    when one would be asked, this raises ``Unsupported`` naming it.
    """
    if not config_path:
        return None
    path = os.path.expanduser(config_path)
    try:
        with open(path, "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"read docker config {path}: {e}")
    if not isinstance(config, dict):
        raise InvalidArgument(f"read docker config {path}: not a json object")
    wanted = _normalize_key(config_key(host))
    helpers = config.get("credHelpers") or {}
    for key, helper in helpers.items():
        if _normalize_key(key) == wanted:
            raise Unsupported(
                f"credentials for {host}: credential helper docker-credential-{helper} "
                "is not supported"
            )
    for key, entry in (config.get("auths") or {}).items():
        if _normalize_key(key) != wanted or not isinstance(entry, dict):
            continue
        user, password = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
                user, sep, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise InvalidArgument(
                    f"read docker config {path}: auths.{key}.auth is not base64 of user:password"
                )
        token = entry.get("identitytoken", "")
        if user or password or token:
            return Credentials(user, password, token)
    if config.get("credsStore"):
        raise Unsupported(
            f"credentials for {host}: credential store docker-credential-{config['credsStore']} "
            "is not supported"
        )
    return None


@dataclass
class Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens per scope set, dropped a little before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(scopes: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(set(scopes)))

    def get(self, scopes: Iterable[str]) -> str | None:
        key = self.key(scopes)
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if token.expires - _EXPIRY_MARGIN < time.monotonic():
                del self._tokens[key]
                return None
            return token.value

    def put(self, scopes: Iterable[str], value: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[self.key(scopes)] = Token(value, time.monotonic() + lifetime)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


def token_request(
    challenge: Challenge, scopes: Iterable[str], credentials: Credentials | None
) -> tuple[str, str, dict[str, str], bytes | None]:
    """The (method, url, headers, body) that asks ``challenge``'s realm for a token.

    With an identity token: an OAuth2 refresh-token POST; otherwise a GET,
    with Basic credentials and ``offline_token=true`` when there are any.
    """
    realm = challenge.params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise InvalidArgument(f"bearer challenge with an invalid realm {realm!r}")
    query: list[tuple[str, str]] = []
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    query.extend(("scope", s) for s in TokenCache.key(scopes))
    headers: dict[str, str] = {}
    if credentials and credentials.identity_token:
        form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", credentials.identity_token),
            ("client_id", "dockyard"),
            *query,
        ]
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return "POST", realm, headers, urllib.parse.urlencode(form).encode()
    if credentials and (credentials.username or credentials.password):
        query.append(("account", credentials.username))
        query.append(("offline_token", "true"))
        headers["Authorization"] = credentials.basic_header()
    sep = "&" if "?" in realm else "?"
    url = realm + (sep + urllib.parse.urlencode(query) if query else "")
    return "GET", url, headers, None


def parse_token_response(body: bytes) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token server's JSON answer."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidArgument("token server answered with invalid json")
    if not isinstance(doc, dict):
        raise InvalidArgument("token server answered with invalid json")
    # "token" is Docker's field, "access_token" OAuth2's; both may be present.
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise InvalidArgument("token server answered without a token")
    lifetime = doc.get("expires_in")
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = _DEFAULT_TOKEN_LIFETIME
    return value, float(lifetime)
