"""Peer authentication: every peer message (gossip, stage) is signed with the cluster secret.

A signature is HMAC-SHA256 over, in this order and each length-prefixed so no two field
sequences produce the same bytes::

    domain tag || sender || recipient || timestamp || nonce || header || sha256(payload)

``header`` is small and signed as is; ``payload`` (tensor bytes, up to megabytes) is signed
through its digest. For an HTTP request the header is ``b"POST /v1/stage"`` (see
``request_header``), which binds a signature to its route: a gossip message cannot be
replayed against ``/v1/stage``. A reply is signed with ``reply_header(request_nonce)``,
which binds it to the one request it answers, so an old reply cannot be fed to a new request.

``recipient`` (header ``X-P2P-Recipient``) names the node the message is for: its node id,
or its ``host:port`` when the sender knows only an address (a seed). A node's ``Verifier``
is built with the names it answers to and refuses any other (``wrong_recipient``), so a
message signed for node A cannot be replayed to node B (each node has its own nonce cache).

The receiver (``Verifier``) refuses, with a reason: missing or malformed headers, an
unknown sender (when per-node secrets are configured), a timestamp outside the window
(clocks must agree to within ``window_s``: run NTP), a bad signature, and a replayed nonce.
The nonce cache is bounded: an entry leaves once its timestamp is outside the window (a
replay would then be stale anyway); when the cache is full the oldest entry is evicted and
its sender's *watermark* rises to its timestamp, so older messages from that sender are
refused as stale — eviction never reopens a replay.

``peer_auth_middleware`` runs all of this before any handler, so a refused message changes
no state.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import secrets as random_secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping

from aiohttp import web

from p2pinfer.errors import Unauthorized
from p2pinfer.protocol.error_body import error_response

HEADER_NODE = "X-P2P-Node"
HEADER_TIMESTAMP = "X-P2P-Timestamp"
HEADER_NONCE = "X-P2P-Nonce"
HEADER_SIGNATURE = "X-P2P-Signature"
HEADER_RECIPIENT = "X-P2P-Recipient"
SIGNED_HEADERS = (HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_RECIPIENT)

DOMAIN_TAG = b"p2pinfer-peer-v2"
"""Changes if the signed layout changes, so old and new signatures never verify each other."""

PROTECTED_PATHS = frozenset({"/v1/gossip", "/v1/stage"})

PEER_ID = web.RequestKey("p2p_peer_id", str)
"""Where the middleware leaves the authenticated sender id for the handler."""

_MAX_NODE_ID_BYTES = 256
_NONCE_CHARACTERS = frozenset("0123456789abcdef")


class RejectReason(str, enum.Enum):
    """Why a peer message was refused (label of the node's rejection counter)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN_SENDER = "unknown_sender"
    STALE = "stale"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    WRONG_RECIPIENT = "wrong_recipient"
    """Correctly signed, but for another node (a message replayed from A to B)."""
    SENDER_MISMATCH = "sender_mismatch"
    """Correctly signed, but the message body names another sender (checked by the route)."""


class PeerRejected(Unauthorized):
    """A peer message failed authentication; ``reason`` says which check refused it."""

    def __init__(self, reason: RejectReason, message: str = "") -> None:
        super().__init__(message or f"peer message refused: {reason.value}")
        self.reason = reason


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def signature_of(secret: bytes, sender: str, recipient: str, timestamp: str, nonce: str, header: bytes,
                 payload: bytes) -> str:
    """Hex HMAC-SHA256 of one message (the value of ``X-P2P-Signature``)."""
    material = b"".join((
        _field(DOMAIN_TAG),
        _field(sender.encode()),
        _field(recipient.encode()),
        _field(timestamp.encode()),
        _field(nonce.encode()),
        _field(header),
        hashlib.sha256(payload).digest(),
    ))
    return hmac.new(secret, material, hashlib.sha256).hexdigest()


def sign(secret: bytes, sender: str, header: bytes, payload: bytes, now: float,
         nonce: str | None = None, *, to: str) -> dict[str, str]:
    """The five ``X-P2P-*`` headers for one message sent by ``sender`` to ``to`` (a node id or
    ``host:port``) at wall time ``now``."""
    nonce = nonce or random_secrets.token_hex(16)
    timestamp = f"{now:.3f}"
    return {
        HEADER_NODE: sender,
        HEADER_RECIPIENT: to,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature_of(secret, sender, to, timestamp, nonce, header, payload),
    }


def request_header(method: str, path: str) -> bytes:
    """The signed header of an HTTP peer request: its method and path."""
    return f"{method.upper()} {path}".encode()


def reply_header(request_nonce: str) -> bytes:
    """The signed header of a reply: the nonce of the request it answers."""
    return b"REPLY " + request_nonce.encode()


def sign_request(secret: bytes, sender: str, method: str, path: str, body: bytes,
                 now: float, *, to: str) -> dict[str, str]:
    """Headers for ``POST path`` with ``body`` for node ``to``; what ``peer_auth_middleware`` verifies."""
    return sign(secret, sender, request_header(method, path), body, now, to=to)


def sign_reply(secret: bytes, sender: str, request_nonce: str, body: bytes, now: float, *,
               to: str) -> dict[str, str]:
    """Headers for the answer to the request that carried ``request_nonce``, sent by ``to``."""
    return sign(secret, sender, reply_header(request_nonce), body, now, to=to)


class Verifier:
    """Checks peer signatures, the timestamp window and nonce freshness.

    ``secret`` is the cluster secret, or a mapping node id -> secret when nodes have their
    own keys (then a sender not in the mapping is ``unknown_sender``). ``allowed_senders``
    optionally restricts which ids may talk even under a shared secret. ``recipients`` are
    the names this node answers to (its id and its ``host:port``): a message signed for
    anyone else is refused; None accepts any recipient (a verifier of replies, tests).
    """

    def __init__(self, secret: bytes | Mapping[str, bytes], *, window_s: float = 30.0,
                 nonce_cache_size: int = 100_000, allowed_senders: Collection[str] | None = None,
                 recipients: Collection[str] | None = None) -> None:
        if isinstance(secret, bytes | bytearray) and not secret:
            raise ValueError("the cluster secret must not be empty")
        if window_s <= 0 or nonce_cache_size <= 0:
            raise ValueError("window_s and nonce_cache_size must be positive")
        self._secret = secret
        self.window_s = window_s
        self.nonce_cache_size = nonce_cache_size
        self._allowed = None if allowed_senders is None else frozenset(allowed_senders)
        self.recipients = None if recipients is None else frozenset(recipients)
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._watermark: dict[str, float] = {}

    def _secret_for(self, sender: str) -> bytes | None:
        if self._allowed is not None and sender not in self._allowed:
            return None
        if isinstance(self._secret, bytes | bytearray):
            return bytes(self._secret)
        return self._secret.get(sender)

    def verify(self, headers: Mapping[str, str], header_bytes: bytes, payload_bytes: bytes,
               now: float) -> str:
        """Return the authenticated sender id, or raise ``PeerRejected`` (an ``Unauthorized``)."""
        values = [headers.get(name) for name in SIGNED_HEADERS]
        if any(value is None or value == "" for value in values):
            missing = [name for name, value in zip(SIGNED_HEADERS, values, strict=True) if not value]
            raise PeerRejected(RejectReason.MISSING, f"missing peer authentication header(s): {', '.join(missing)}")
        sender, timestamp_text, nonce, signature, recipient = (str(value) for value in values)
        try:
            timestamp = float(timestamp_text)
        except ValueError:
            timestamp = math.nan
        if (not math.isfinite(timestamp) or len(sender.encode()) > _MAX_NODE_ID_BYTES
                or len(recipient.encode()) > _MAX_NODE_ID_BYTES
                or not 16 <= len(nonce) <= 128 or not set(nonce) <= _NONCE_CHARACTERS or len(signature) != 64):
            raise PeerRejected(RejectReason.MALFORMED, "malformed peer authentication header")
        secret = self._secret_for(sender)
        if secret is None:
            raise PeerRejected(RejectReason.UNKNOWN_SENDER, f"unknown peer {sender!r}")
        if abs(now - timestamp) > self.window_s:
            raise PeerRejected(RejectReason.STALE,
                               f"timestamp {timestamp_text} is {now - timestamp:+.1f}s from this node's clock "
                               f"(window ±{self.window_s:g}s)")
        expected = signature_of(secret, sender, recipient, timestamp_text, nonce, header_bytes, payload_bytes)
        if not hmac.compare_digest(expected, signature.lower()):
            raise PeerRejected(RejectReason.BAD_SIGNATURE, "bad peer signature")
        if self.recipients is not None and recipient not in self.recipients:
            raise PeerRejected(RejectReason.WRONG_RECIPIENT,
                               f"message signed for {recipient[:80]!r}, not for this node")
        # Only a correctly signed message reaches the nonce cache, so forgeries cannot fill it.
        self._forget_expired(now)
        key = (sender, nonce)
        if key in self._seen:
            raise PeerRejected(RejectReason.REPLAYED, "replayed peer message (nonce already seen)")
        if timestamp <= self._watermark.get(sender, -math.inf):
            raise PeerRejected(RejectReason.STALE, "message older than the replay cache remembers")
        self._seen[key] = timestamp
        if len(self._seen) > self.nonce_cache_size:
            (old_sender, _), old_timestamp = self._seen.popitem(last=False)
            self._watermark[old_sender] = max(self._watermark.get(old_sender, -math.inf), old_timestamp)
        return sender

    def verify_reply(self, headers: Mapping[str, str], request_nonce: str, body: bytes, now: float) -> str:
        """Check the signed answer to this node's request with nonce ``request_nonce``."""
        return self.verify(headers, reply_header(request_nonce), body, now)

    def _forget_expired(self, now: float) -> None:
        horizon = now - self.window_s
        while self._seen:
            key, timestamp = next(iter(self._seen.items()))
            if timestamp >= horizon:
                break
            del self._seen[key]
        if self._watermark:
            for sender in [sender for sender, mark in self._watermark.items() if mark < horizon]:
                del self._watermark[sender]

    def __len__(self) -> int:
        """Nonces currently remembered."""
        return len(self._seen)


RejectCallback = Callable[[RejectReason], object]


def peer_auth_middleware(verifier: Verifier, protected_paths: Collection[str] = PROTECTED_PATHS,
                         on_reject: RejectCallback | None = None,
                         clock: Callable[[], float] = time.time) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: requests to ``protected_paths`` must carry a valid peer signature.

    A refused request gets 401 ``{"error", "code": "unauthorized", "reason"}`` before its
    handler runs; ``on_reject(reason)`` is called so the node can count rejections in
    ``/metrics``. An accepted request has the sender id in ``request[PEER_ID]``.
    """
    protected = frozenset(protected_paths)

    @web.middleware
    async def authenticate_peer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
        if request.path not in protected:
            return await handler(request)
        body = await request.read()  # aiohttp keeps it: the handler reads the same bytes
        try:
            sender = verifier.verify(request.headers, request_header(request.method, request.path), body, clock())
        except PeerRejected as error:
            if on_reject is not None:
                on_reject(error.reason)
            return error_response(error)
        request[PEER_ID] = sender
        return await handler(request)

    return authenticate_peer
