"""Secrets vault: Fernet-encrypted values in the database, keys outside it (key file 0600 or env)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.clock import SYSTEM_CLOCK, Clock
from core.errors import ConfigError
from store.db import Database, owner_only

log = logging.getLogger(__name__)

KEY_ENV = "NOTIFIER_MASTER_KEY"  # comma-separated Fernet keys, newest first; wins over the key file

KNOWN_SECRETS: dict[str, str] = {
    "ifs.base_url": "IFS Cloud tenant URL, e.g. https://acme.ifs.cloud",
    "ifs.client_id": "IFS IAM client id (client credentials)",
    "ifs.client_secret": "IFS IAM client secret",
    "bot.app_id": "Microsoft Entra app (Azure Bot) id",
    "bot.app_password": "Microsoft Entra app client secret",
    "bot.tenant_id": "Microsoft Entra tenant id of the app registration",
}


class KeyRing:
    """Where the master keys live. The first key encrypts; all keys decrypt."""

    def __init__(self, key_file: str, env: Mapping[str, str]) -> None:
        # env is passed in (os.environ by the composition root): only that root reads the process environment
        self.key_file = Path(key_file)
        self._env = env

    @property
    def from_env(self) -> bool:
        return bool(self._env.get(KEY_ENV))

    def keys(self, *, create: bool = True) -> list[bytes]:
        if self.from_env:
            return [k.strip().encode() for k in self._env[KEY_ENV].split(",") if k.strip()]
        if not self.key_file.exists():
            if not create:
                raise ConfigError("service.key_file", f"key file {self.key_file} is missing but the database"
                                                      " holds secrets encrypted with it; restore the key file")
            self.write([Fernet.generate_key()])
            log.info("created a new master key file %s", self.key_file)
        owner_only(self.key_file, "service.key_file")
        keys = [line.strip().encode() for line in self.key_file.read_text().splitlines() if line.strip()]
        if not keys:
            raise ConfigError("service.key_file", f"{self.key_file} holds no key")
        return keys

    def write(self, keys: list[bytes]) -> None:
        """Replace the key file atomically, born 0600."""
        if self.from_env:
            raise ConfigError(KEY_ENV, "keys come from the environment; rotate them where they are defined")
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(k.decode() for k in keys) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.key_file)

    def fernet(self, *, create: bool = True) -> MultiFernet:
        try:
            return MultiFernet([Fernet(k) for k in self.keys(create=create)])
        except ValueError:
            raise ConfigError("service.key_file", "a master key is not a valid Fernet key") from None


class Vault:
    def __init__(self, db: Database, keyring: KeyRing, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._keyring = keyring
        self._now = clock.time

    async def set(self, name: str, value: str) -> None:
        if name not in KNOWN_SECRETS:
            raise ConfigError(name, f"unknown secret (known: {', '.join(KNOWN_SECRETS)})")
        if not value:
            raise ConfigError(name, "empty value")
        fernet = await self._fernet()
        await self._check_key(fernet)
        token = fernet.encrypt(value.encode())
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO secrets (name, token, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at",
                (name, token, self._now()))

    async def _fernet(self) -> MultiFernet:
        # a new key only for a vault that holds nothing yet: a lost key file must not be silently replaced
        empty = await self._db.scalar("SELECT count(*) FROM secrets") == 0
        return self._keyring.fernet(create=empty)

    async def _check_key(self, fernet: MultiFernet) -> None:
        """Refuse to write under a key that cannot read what is stored: the vault would end up split
        between two keys, and whichever is lost takes its secrets with it."""
        rows = await self._db.fetchall("SELECT name, token FROM secrets ORDER BY name")
        for row in rows:
            try:
                fernet.decrypt(bytes(row["token"]))
            except InvalidToken:
                raise ConfigError("service.key_file", f"the configured master key does not decrypt the stored"
                                                      f" secret {row['name']}; restore the key it was stored"
                                                      " with (see the runbook) before changing secrets") from None

    async def get(self, name: str) -> str | None:
        token = await self._db.scalar("SELECT token FROM secrets WHERE name = ?", (name,))
        if token is None:
            return None
        try:
            return (await self._fernet()).decrypt(bytes(token)).decode()
        except InvalidToken:
            raise ConfigError(name, "cannot be decrypted with the configured master key(s)") from None

    async def delete(self, name: str) -> bool:
        async with self._db.transaction() as conn:
            cur = await conn.execute("DELETE FROM secrets WHERE name = ?", (name,))
            return cur.rowcount > 0

    async def names(self) -> list[tuple[str, float]]:
        rows = await self._db.fetchall("SELECT name, updated_at FROM secrets ORDER BY name")
        return [(r["name"], r["updated_at"]) for r in rows]

    async def rotate_key(self) -> int:
        """New key first, re-encrypt every secret under it, then retire the old keys. Returns the count."""
        # a missing key file is an error here, not a reason to make one: the stored secrets need the old key
        empty = await self._db.scalar("SELECT count(*) FROM secrets") == 0
        old = self._keyring.keys(create=empty)
        await self._check_key(self._keyring.fernet(create=False))  # no key file written before this passes
        new = Fernet.generate_key()
        self._keyring.write([new, *old])  # readers can decrypt old and new tokens during the switch
        multi = self._keyring.fernet()
        async with self._db.transaction() as conn:
            async with conn.execute("SELECT name, token FROM secrets") as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                await conn.execute("UPDATE secrets SET token = ?, updated_at = ? WHERE name = ?",
                                   (multi.rotate(bytes(row["token"])), self._now(), row["name"]))
        self._keyring.write([new])
        log.info("master key rotated; %d secrets re-encrypted", len(rows))
        return len(rows)
