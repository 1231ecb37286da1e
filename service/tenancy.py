"""Who is calling: each API key belongs to a tenant and may be read-only.

Key file format (IIS_API_KEYS_FILE), one key a line, `#` comments:

    <key>                       tenant "default", read-write (the format before tenancy)
    <key> <tenant>              that tenant, read-write
    <key> <tenant> read-only    may identify, list and export; not enrol, delete or import

Keys in IIS_API_KEYS and IIS_ADMIN_API_KEYS belong to tenant "default". Without any key
configured every caller is tenant "default", read-write. A tenant sees only its own galleries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

DEFAULT_TENANT = "default"
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """tenant: whose galleries; actor: a non-secret label of the key for the audit log."""

    tenant: str = DEFAULT_TENANT
    read_only: bool = False
    actor: str = "anonymous"


ANONYMOUS = Principal()


def actor_of(key: str) -> str:
    """A key's audit label: the first 12 hex digits of its SHA-256 (the key is never logged)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_key_line(line: str, where: str) -> tuple[str, Principal] | None:
    """One line of the key file -> (key, principal); None for blanks and comments."""
    parts = line.split()
    if not parts or parts[0].startswith("#"):
        return None
    if len(parts) > 3 or (len(parts) == 3 and parts[2] != "read-only"):
        raise ValueError(
            f"{where}: expected '<key> [<tenant> [read-only]]', got {len(parts)} words"
        )
    tenant = parts[1] if len(parts) > 1 else DEFAULT_TENANT
    if not TENANT.match(tenant):
        raise ValueError(f"{where}: tenant {tenant!r} is not a URL-safe name")
    return parts[0], Principal(tenant, len(parts) == 3, actor_of(parts[0]))


def read_key_file(path: Path) -> dict[str, Principal]:
    out: dict[str, Principal] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parsed = parse_key_line(line, f"{path}:{n}")
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


def principals(
    keys: Iterable[str], key_file: Path | None, admin_keys: Iterable[str] = ()
) -> dict[str, Principal]:
    """Every accepted key -> its principal."""
    out = {k: Principal(DEFAULT_TENANT, False, actor_of(k)) for k in [*keys, *admin_keys]}
    if key_file is not None:
        out.update(read_key_file(key_file))
    return out


def principal_of(request: Request) -> Principal:
    """Set by ApiKeyMiddleware for an accepted key; anonymous when no key is configured."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS
