"""Judging paths and URIs: is this value under that root?  Pure, shared by policies and grants.

Answers are three-valued (``Tri``): True (judged under), False (judged not under) and None —
*unjudgeable* — when the honest answer depends on something the guard cannot see: the server's
working directory, the home directory ``~`` expands to, whether the disk is case-insensitive,
where a symbolic link leads, how a server decodes an escaped ``/``.  Callers turn None into the
safe answer for their side: an allow does not match, a deny does.

Both sides are compared after Unicode NFC normalisation, so ``sécret`` spelled with a combining
accent (NFD, as macOS writes names) is the same folder as the precomposed spelling.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import idna

Tri = bool | None
Parts = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PathContext:
    """What the guard knows about an upstream's filesystem when judging a path.

    ``workdir``: the absolute directory the upstream resolves relative paths against (None: not
    declared, so a relative path is unjudgeable against an absolute root).  ``resolve``: a
    symlink resolver injected by the caller (the policy engine does no I/O); it returns the
    resolved absolute path, or None when it cannot resolve, which makes the value unjudgeable.
    """

    workdir: str | None = None
    resolve: Callable[[str], str | None] | None = None


def nfc(text: str) -> str:
    """NFC form of ``text``; ASCII (the common case) is returned as is, without allocating."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def normalise_path(path: str) -> tuple[bool, Parts] | None:
    """``(absolute, components)`` in NFC with ``.``, ``..`` and empty segments resolved lexically.

    None when the path cannot be judged: it is empty, contains a NUL or a backslash (a separator
    on some servers, a filename character on others), starts with ``~`` (servers such as
    server-filesystem expand it to a home directory), or is relative and climbs above its start.
    ``..`` at an absolute root stays at the root, as the kernel does.
    """
    if not path or "\x00" in path or "\\" in path or path.startswith("~"):
        return None
    path = nfc(path)
    absolute = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            elif not absolute:
                return None
            continue
        out.append(part)
    return absolute, tuple(out)


# --------------------------------------------------------------------------- URIs

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HEX = frozenset("0123456789abcdefABCDEF")
# characters an escape is not decoded to, because that would change how the URI splits: in the
# path ``/``, ``?``, ``#``, ``%`` and ``\`` (a separator to some servers), and ``*``, which is
# glob syntax in selectors and grant patterns (an escaped star there stays a literal star); in
# the query and fragment every RFC 3986 delimiter; controls everywhere
_CONTROLS = frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
_KEEP_IN_PATH = frozenset("/?#%\\*") | _CONTROLS
_KEEP_IN_TAIL = frozenset(":/?#[]@!$&'()*+,;=%\\") | _CONTROLS


def _decode(text: str, *, everything: bool, keep: frozenset[str] = _KEEP_IN_PATH) -> str | None:
    """Percent-decode ``text``: every escape (``everything``) or only those that do not change
    the URI's structure (the rest are kept, with upper-case hex).  None on a malformed escape or
    bytes that are not UTF-8."""
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        run = bytearray()
        while i < n and text[i] == "%":
            if i + 2 >= n or text[i + 1] not in _HEX or text[i + 2] not in _HEX:
                return None
            run.append(int(text[i + 1:i + 3], 16))
            i += 3
        try:
            decoded = run.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if everything:
            out.append(decoded)
        else:
            out.extend(f"%{ord(c):02X}" if c in keep else c for c in decoded)
    return "".join(out)


def _remove_dots(path: str) -> str:
    """RFC 3986 §5.2.4 ``remove_dot_segments`` for an absolute path."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _split(uri: str) -> tuple[str, str, str] | None:
    """``(scheme ":" ["//" authority], path, "?query#fragment")`` for a URI with a scheme."""
    m = _SCHEME.match(uri)
    if m is None:
        return None
    head_end = m.end()
    if uri.startswith("//", head_end):
        slash = [j for j in (uri.find(c, head_end + 2) for c in "/?#") if j >= 0]
        head_end = min(slash) if slash else len(uri)
    tail = [j for j in (uri.find(c, head_end) for c in "?#") if j >= 0]
    path_end = min(tail) if tail else len(uri)
    return m.group(1).lower() + uri[m.end(1):head_end], uri[head_end:path_end], uri[path_end:]


def uri_forms(uri: str) -> tuple[str, ...] | None:
    """The readings of ``uri`` a policy must accept or refuse together; None when unjudgeable.

    The first is the canonical form (RFC 3986 normalisation: lower-case scheme, the authority
    in canonical form (``_authority``), escapes that do not change the URI's structure decoded,
    dot segments removed, NFC; in a ``file:`` path repeated slashes are one).  When a server
    might read the URI differently — it keeps dot segments literally, decodes an escaped ``/``,
    takes ``\\`` for ``/``, merges repeated slashes, ignores the user part — the other readings
    follow, and a decision takes the most severe answer over all of them.  Control characters,
    malformed escapes, non-UTF-8 escapes and a host that cannot be read make a URI unjudgeable.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        return None
    forms = _readings(uri)
    if "\\" in uri:  # ``\\`` is ``/`` to some servers (and to every WHATWG URL parser for http)
        slashed = _readings(uri.replace("\\", "/"))
        if slashed is None:
            return None
        forms = slashed if forms is None else forms + slashed  # a host with a ``\\`` has only the one reading
    return None if forms is None else tuple(dict.fromkeys(forms))


def _readings(uri: str) -> list[str] | None:
    parts = _split(uri)
    if parts is None:  # not a URI: judged as the text it is
        return [nfc(uri)]
    head, path, tail = parts
    file = head.startswith("file:")
    if head == "file:" and path.startswith("/"):
        head = "file://"  # file:/x is file:///x
    heads = _authority(head)
    if heads is None:
        return None
    if file and path.startswith("/"):
        path = _SLASHES.sub("/", path)  # to a filesystem, repeated slashes are one
    lit_path, lit_tail = _decode(path, everything=False), _decode(tail, everything=False, keep=_KEEP_IN_TAIL)
    if lit_path is None or lit_tail is None:
        return None
    if not lit_path and "//" in head and "*" not in head and head.partition(":")[0] in _EMPTY_PATH_IS_ROOT:
        lit_path = "/"  # https://host is https://host/
    pairs = [(_remove_dots(lit_path) if lit_path.startswith("/") else lit_path, lit_tail)]
    if "%" in lit_path or "%" in lit_tail:
        full_path, full_tail = _decode(lit_path, everything=True), _decode(lit_tail, everything=True)
        if full_path is None or full_tail is None:
            return None
        pairs.append((_remove_dots(full_path) if full_path.startswith("/") else full_path, full_tail))
    if not file:  # a server that merges repeated slashes reads this
        pairs += [(_remove_dots(_SLASHES.sub("/", p)), t) for p, t in pairs if "//" in p]
    pairs.append((lit_path, lit_tail))
    return [nfc(h + p + t) for h in heads for p, t in pairs]


_SLASHES = re.compile(r"/{2,}")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_EMPTY_PATH_IS_ROOT = frozenset(_DEFAULT_PORTS)
# what a decoded host must not contain: it would change where the URI splits, or is no host at all
_NOT_IN_HOST = frozenset("/?#@[]\\:% ") | _CONTROLS


def _authority(head: str) -> list[str] | None:
    """The canonical ``scheme ":" ["//" authority]`` of ``head`` (the scheme already in lower
    case), then the same without its user part when it has one; None when the host cannot be read.

    Canonical: host in lower case with its escapes decoded (IDNA to ASCII when it is not ASCII),
    without a trailing dot; no empty or default port (``:443`` for https and wss, ``:80`` for
    http and ws); ``file://localhost`` is ``file://``."""
    scheme, _colon, rest = head.partition(":")
    if not rest.startswith("//"):
        return [head]
    user, at, hostport = rest[2:].rpartition("@")
    if hostport.startswith("["):  # an IPv6 literal: only its case can differ
        close = hostport.find("]")
        if close < 0:
            return None
        host, port = hostport[:close + 1].lower(), hostport[close + 1:]
        if port and not port.startswith(":"):
            return None
        port = port[1:]
    else:
        host, _sep, port = hostport.partition(":")
        decoded = _decode(host, everything=True)
        if decoded is None or any(c in _NOT_IN_HOST for c in decoded):
            return None
        host = decoded.lower()
        if not host.isascii():
            # not a DNS name (a glob, another scheme's name): compared as written, in lower case
            with contextlib.suppress(idna.IDNAError):
                host = idna.encode(host, uts46=True).decode("ascii")
        if host.endswith(".") and len(host) > 1:
            host = host[:-1]
    if port.isdigit() and port.isascii():
        port = str(int(port))
    if not port or _DEFAULT_PORTS.get(scheme) == port:
        port = ""
    if scheme == "file" and host == "localhost":
        host = ""
    hostport = f"{host}:{port}" if port else host
    canonical = f"{scheme}://{user}@{hostport}" if at else f"{scheme}://{hostport}"
    return [canonical, f"{scheme}://{hostport}"] if at else [canonical]


def canonical_uri(text: str) -> str:
    """The canonical reading of a URI (or of a URI glob in a policy or grant, whose ``*`` are
    kept), so a selector written with escapes or in NFD selects the decoded, NFC request; text
    that cannot be read as a URI is returned as is (it then only matches itself)."""
    forms = uri_forms(text)
    return forms[0] if forms else text


def file_uri_path(uri: str) -> str | None:
    """The absolute path a ``file:`` URI names (percent-decoded), or None when it is not one
    the guard can judge: another scheme, a remote host, a query or fragment, a malformed escape,
    or an escape that decodes to ``/``, ``\\`` or NUL (servers disagree on those)."""
    if uri[:5].lower() != "file:":
        return None
    rest = uri[5:]
    if "?" in rest or "#" in rest:
        return None
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host.lower() not in ("", "localhost") or not slash:
            return None
        path = "/" + path
    elif rest.startswith("/"):
        path = rest
    else:
        return None
    low = path.lower()
    if "%2f" in low or "%5c" in low or "%00" in low:
        return None
    return _decode(path, everything=True)


# --------------------------------------------------------------------------- under


def _within(parts: Parts, root: Parts, root_folded: str) -> Tri:
    """True when ``parts`` starts with ``root``; None when it does only ignoring case (a
    case-insensitive disk would make it the same folder); else False.  ``root_folded`` is the
    root's segments joined by ``/`` and case-folded."""
    n = len(root)
    head = parts[:n]
    if head == root:
        return True
    if len(head) < n or "/".join(head).casefold() != root_folded:
        return False
    return None


class Under:
    """The ``under`` judgement for one root (a path or a ``file:`` URI), compiled once."""

    __slots__ = ("_abs", "_folded", "_parts", "_root", "text")

    def __init__(self, root: str) -> None:
        self.text = root
        path = file_uri_path(root) if root[:5].lower() == "file:" else None if _SCHEME.match(root) else root
        self._root = normalise_path(path) if path is not None else None
        self._abs: bool = self._root[0] if self._root is not None else True
        self._parts: Parts | None = self._root[1] if self._root is not None else None
        self._folded = "/".join(self._root[1]).casefold() if self._root else ""

    @property
    def usable(self) -> bool:
        """False when the root itself cannot be judged (``check`` reports it)."""
        return self._root is not None

    def judge(self, value: Any, ctx: PathContext | None = None, *, uri: bool = False) -> Tri:
        """Is ``value`` (a path, or a ``file:`` URI) under the root?  ``uri``: only URIs are accepted."""
        root = self._parts
        if not isinstance(value, str) or root is None:
            return None
        if ctx is None and not uri and ":" not in value:  # the hot path: a plain path, nothing to place
            got = normalise_path(value)
            if got is None or got[0] is not self._abs:
                return None
            return _within(got[1], root, self._folded)
        return self._judge(value, ctx, uri)

    def _judge(self, value: str, ctx: PathContext | None, uri: bool) -> Tri:
        assert self._root is not None
        if ":" not in value:
            if uri:
                return None
            path = value
        elif value[:5].lower() == "file:":
            found = file_uri_path(value)
            if found is None:
                return None
            path = found
        elif uri or _SCHEME.match(value):
            return None  # another scheme (http:, c:, ...): what it names is not a path here
        else:
            path = value
        relative_here = ctx is not None and ctx.workdir is not None and not path.startswith("/")
        got = _join(ctx.workdir, path) if relative_here and ctx is not None and ctx.workdir is not None else normalise_path(path)
        if got is None:
            return None
        absolute, parts = got
        root_abs, root, folded = self._root[0], self._root[1], self._folded
        if not root_abs and ctx is not None and ctx.workdir is not None:
            joined = _join(ctx.workdir, "/".join(root) or ".")
            if joined is None:
                return None
            root_abs, root = joined
            folded = "/".join(root).casefold()
        if absolute != root_abs:
            return None  # a relative value against an absolute root (or the reverse): the base is unknown
        lexical = _within(parts, root, folded)
        if ctx is None or ctx.resolve is None:
            return lexical
        if not absolute:
            return None  # a resolver needs an absolute path
        # the resolver sees the path as written (``link/..`` is the link's parent, not ours)
        real = _resolved(ctx.resolve, f"{ctx.workdir}/{path}" if relative_here else path)
        if real is None:
            return None
        real_root = _resolved(ctx.resolve, "/" + "/".join(root)) or root
        resolved = _within(real, real_root, "/".join(real_root).casefold())
        if resolved is True or (resolved is False and lexical is False):
            return resolved
        return None  # the link and its target disagree (or case decides): never "not under"


def _join(workdir: str, path: str) -> tuple[bool, Parts] | None:
    """``path`` judged from ``workdir`` (which must itself be absolute)."""
    if not workdir.startswith("/") or path.startswith("~"):
        return None
    return normalise_path(workdir + "/" + path)


def _resolved(resolve: Callable[[str], str | None], path: str) -> Parts | None:
    """The resolved components (NFC) of ``path``, resolved as written: the spelling the server
    will open, which on disk may be NFD."""
    try:
        real = resolve(path)
    except (OSError, ValueError):
        return None
    if real is None:
        return None
    got = normalise_path(real)
    return got[1] if got is not None and got[0] else None
