"""Where the guard keeps an OAuth upstream's tokens: per user and per upstream, encrypted at rest.

``tokens/<user>/<upstream>.token`` holds the tokens, the client registration and the discovered
metadata, Fernet-encrypted under the machine's key (``key`` in the tokens directory), each file
written atomically with mode 0600 in a 0700 directory.  A record is bound to the upstream URL, so a
changed ``url:`` never receives another server's token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from mcp.client.auth import TokenStorage
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from mcp_guard.errors import UpstreamError

log = logging.getLogger("mcp_guard.upstream.oauth")


def _write_private(path: Path, data: bytes) -> None:
    """Atomic replace, mode 0600, directory 0700: tokens are never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key(directory: Path) -> Fernet:
    """The machine's token key (``key`` in the tokens directory), created on first use with mode 0600."""
    path = directory / "key"
    try:
        return Fernet(path.read_bytes().strip())
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return Fernet(path.read_bytes().strip())
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return Fernet(key)
    except (OSError, ValueError) as exc:
        raise UpstreamError(f"the token key {path} is unreadable ({exc}); delete it and log in again") from None


class TokenStore(TokenStorage):
    """One upstream's tokens for one user: ``tokens/<user>/<upstream>.token``, encrypted."""

    def __init__(self, path: Path, url: str, fixed_client: OAuthClientInformationFull | None = None) -> None:
        self.path = path
        self.url = url
        self.fixed_client = fixed_client  # a pre-registered client from guard.yaml, never stored

    def load(self) -> dict[str, Any]:
        """The decrypted record, or {} when there is none (or it belongs to another URL / key)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UpstreamError(f"cannot read the stored token {self.path}: {exc.strerror or exc}") from None
        try:
            record = json.loads(_key(self.path.parent.parent).decrypt(blob))
        except (InvalidToken, ValueError):
            log.warning("stored token %s cannot be decrypted with this machine's key; ignoring it", self.path)
            return {}
        if not isinstance(record, dict) or record.get("url") != self.url:
            return {}  # issued for another upstream URL: never sent to this one
        return record

    def save(self, **fields: Any) -> None:
        record = self.load() or {"url": self.url}
        record.update(fields)
        _write_private(self.path, _key(self.path.parent.parent).encrypt(json.dumps(record).encode()))

    def clear(self) -> bool:
        """Forget everything stored for this upstream; False when nothing was stored."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    async def get_tokens(self) -> OAuthToken | None:
        raw = self.load().get("tokens")
        return OAuthToken.model_validate(raw) if raw else None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.save(tokens=tokens.model_dump(mode="json", exclude_none=True))

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        if self.fixed_client is not None:
            return self.fixed_client
        raw = self.load().get("client")
        return OAuthClientInformationFull.model_validate(raw) if raw else None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        if self.fixed_client is None:
            self.save(client=client_info.model_dump(mode="json", exclude_none=True))

