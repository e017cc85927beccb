"""SSH keys for admin users: `--ssh-key-value` (a file or the key itself), `--generate-ssh-keys`."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sigvirt.errors import InvalidArgument, NotFound

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-")


def ssh_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh"


def default_private_key() -> Path:
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = ssh_dir() / name
        if path.exists():
            return path
    return ssh_dir() / "id_ed25519"


def _check_public(text: str, origin: str) -> tuple[str, ...]:
    keys = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not keys or not all(k.startswith(KEY_TYPES) and len(k.split()) >= 2 for k in keys):
        raise InvalidArgument(f"{origin}: not an OpenSSH public key (expected 'ssh-ed25519 AAAA…')")
    return keys


def generate(path: Path, comment: str | None = None) -> Path:
    """An ed25519 key pair at path / path.pub (0600 / 0644), like ssh-keygen would write."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    comment = comment or f"{os.environ.get('USER', 'sigvirt')}@sigvirt"
    path.with_suffix(".pub").write_text(f"{pub.decode()} {comment}\n")
    return path


def resolve(value: str | None, generate_keys: bool) -> tuple[tuple[str, ...], Path | None]:
    """Public keys to put in the seed, and the private key to log in with (None if unknown)."""
    if value:
        if value.startswith(KEY_TYPES):
            return _check_public(value, "--ssh-key-value"), None
        path = Path(os.path.expanduser(value))
        if not path.is_file():
            raise NotFound(f"--ssh-key-value {value}: no such file")
        keys = _check_public(path.read_text(), f"--ssh-key-value {value}")
        private = path.with_suffix("") if path.suffix == ".pub" else None
        return keys, private if private and private.exists() else None
    private = default_private_key()
    public = private.with_suffix(".pub")
    if not public.exists():
        if not generate_keys:
            raise NotFound(
                f"no SSH key at {public}: pass --ssh-key-value FILE or --generate-ssh-keys"
            )
        generate(private)
    return _check_public(public.read_text(), str(public)), private
