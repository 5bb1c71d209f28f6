"""The keys that seal a store, kept outside it: without them anyone holding the package could recompute
every digest after an edit, so the seals and the QP signatures are HMAC-SHA256 under secret keys that
live in a key file, never in the database.

Where the key file is: ``CELLTX_KEY_FILE`` when set, else ``$XDG_CONFIG_HOME/celltx/keys.json``
(``~/.config/celltx/keys.json``; ``%APPDATA%\\celltx\\keys.json`` on Windows). A writer creates it on
first use, owner-only (the file 0600 in a 0700 folder); a reader (``verify``) never creates it. A key
file that others can read is refused, as ssh refuses such a private key.

The file is JSON: ``{"celltx_keys": 1, "seal": HEX, "roles": {"qualified_person": HEX}}``: one seal key
(the installation's: run, scenario and correction seals and the ledger) and one key per signing role.
The store keeps only a key's id (:func:`key_id`, a one-way digest of it), so ``verify`` can tell a seal
made by another installation's key ("sealed by an unknown key") from a forged one.
"""

import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._common import StoreError

KEY_FILE_ENV = "CELLTX_KEY_FILE"
FORMAT = 1
SIGNING_ROLES = ("qualified_person",)  # release.signer_role values that sign with a role key
_KEY_BYTES = 32
_MAX_FILE_BYTES = 64_000
_cache: dict[str, tuple[tuple[int, ...], "Keyring"]] = {}


def default_key_file() -> Path:
    """Where the key file is kept when ``CELLTX_KEY_FILE`` is not set."""
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "celltx" / "keys.json"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "celltx" / "keys.json"


def key_file() -> Path:
    """The key file in use: ``CELLTX_KEY_FILE``, else the default location."""
    named = os.environ.get(KEY_FILE_ENV, "").strip()
    return Path(named).expanduser() if named else default_key_file()


def key_id(key: bytes) -> str:
    """A key's public name: 16 hex digits of a domain-separated sha256 (it does not reveal the key)."""
    return hashlib.sha256(b"celltx key id\0" + key).hexdigest()[:16]


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key`` (32 bytes)."""
    return hmac.new(key, data, hashlib.sha256).digest()


@dataclass(frozen=True)
class Keyring:
    """The keys of one key file: the seal key and the role keys, each findable by its id."""

    path: Path
    seal: bytes
    roles: dict[str, bytes]
    by_id: dict[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        ids = {key_id(self.seal): self.seal, **{key_id(k): k for k in self.roles.values()}}
        object.__setattr__(self, "by_id", ids)

    @property
    def seal_id(self) -> str:
        return key_id(self.seal)

    def role(self, role: str) -> bytes:
        """The signing key of a role, or a StoreError naming the file and the roles it has."""
        if role not in self.roles:
            raise StoreError(f"key file {self.path}: no key for role {role!r} (roles: "
                             f"{', '.join(sorted(self.roles)) or 'none'}); it signs releases")
        return self.roles[role]

    def role_of(self, kid: str) -> str | None:
        """Which role a key id belongs to (None for the seal key or an unknown id)."""
        return next((r for r, k in self.roles.items() if key_id(k) == kid), None)


def _new_file_text() -> str:
    keys = {"celltx_keys": FORMAT, "seal": secrets.token_hex(_KEY_BYTES),
            "roles": {r: secrets.token_hex(_KEY_BYTES) for r in SIGNING_ROLES}}
    return json.dumps(keys, indent=2) + "\n"


def _create(path: Path) -> None:
    """Write a new key file atomically, owner-only: a temporary file hard-linked into place, so two
    processes starting at once end with one complete file (the loser reads the winner's)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_new_file_text())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create key file {path}: {e.strerror or e} (set {KEY_FILE_ENV} to a "
                         "writable path)") from e


def _check_private(path: Path, mode: int) -> None:
    if os.name == "posix" and mode & 0o077:
        raise StoreError(f"key file {path} is accessible by other users (mode {mode & 0o777:o}): "
                         f"run `chmod 600 {path}`")


def _hex_key(path: Path, name: str, value: object) -> bytes:
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StoreError(f"key file {path}: {name} must be a hex key of at least 16 bytes")
    return key


def _parse(path: Path, text: str) -> Keyring:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StoreError(f"key file {path} is not a celltx key file (not JSON: {e})") from e
    if not isinstance(data, dict) or data.get("celltx_keys") != FORMAT:
        raise StoreError(f"key file {path} is not a celltx key file (no \"celltx_keys\": {FORMAT})")
    roles = data.get("roles", {})
    if not isinstance(roles, dict):
        raise StoreError(f"key file {path}: roles must be a mapping of role name to hex key")
    return Keyring(path, _hex_key(path, "seal", data.get("seal")),
                   {str(r): _hex_key(path, f"roles.{r}", k) for r, k in roles.items()})


def _read(path: Path) -> Keyring:
    try:
        st = path.stat()
        sig = (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mode)  # ctime: a chmod too
        cached = _cache.get(str(path))
        if cached is not None and cached[0] == sig:
            return cached[1]
        _check_private(path, st.st_mode)
        if st.st_size > _MAX_FILE_BYTES or not path.is_file():
            raise StoreError(f"key file {path} is not a celltx key file (not a small regular file)")
        ring = _parse(path, path.read_text(encoding="utf-8"))
    except UnicodeError as e:
        raise StoreError(f"key file {path} is not a celltx key file (not UTF-8 text)") from e
    except OSError as e:
        raise StoreError(f"cannot read key file {path}: {e.strerror or e}") from e
    _cache[str(path)] = (sig, ring)
    return ring


def load_keys(create: bool) -> Keyring | None:
    """This installation's keys. ``create``: a writer makes the key file on first use; a reader gets
    None when there is none (then every keyed seal is one of an unknown key)."""
    path = key_file()
    if not path.exists():
        if not create:
            return None
        _create(path)
    return _read(path)


def signing_keys() -> Keyring:
    """The keys a write seals and signs with (the key file is created on first use)."""
    ring = load_keys(create=True)
    assert ring is not None  # created above
    return ring
