"""Authenticated encryption of RMIR archives (`path.rmir:KEY`).

Layout: a header, then the archive in chunks, each sealed with AES-256-GCM. The key comes
from the passphrase through scrypt. Each chunk's nonce holds its index and a "last chunk"
flag, so reordered, dropped or truncated chunks fail authentication like altered bytes do.
A separate key-check value in the header tells a wrong passphrase from a tampered file.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from edged.errors import RmirError, WrongKeyError

MAGIC = b"EDGED-RMIR-AEAD1"
CHUNK_SIZE = 1 << 20
_TAG = 16
# magic, salt, log2(N), r, p, nonce prefix, chunk size, key check
_HEADER = struct.Struct(">16s16sBBB7sI16s")
_SCRYPT_LOG2N, _SCRYPT_R, _SCRYPT_P = 15, 8, 1


def is_encrypted(head: bytes) -> bool:
    """True if these first bytes of a file start an encrypted RMIR."""
    return head.startswith(MAGIC)


def _derive(passphrase: str, salt: bytes, log2n: int, r: int, p: int) -> tuple[bytes, bytes]:
    if not 10 <= log2n <= 20 or not 1 <= r <= 16 or not 1 <= p <= 4:
        raise RmirError("The encrypted RMIR's header holds impossible key parameters; it is corrupt.")
    kdf = Scrypt(salt=salt, length=64, n=1 << log2n, r=r, p=p)
    material = kdf.derive(passphrase.encode("utf-8"))
    return material[:32], material[32:]


def _key_check(check_key: bytes, header_wo_check: bytes) -> bytes:
    return hmac.new(check_key, header_wo_check, hashlib.sha256).digest()[:16]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt_stream(src: BinaryIO, dst: BinaryIO, passphrase: str) -> None:
    """Encrypt everything readable from `src` into `dst` with a key derived from `passphrase`."""
    if not passphrase:
        raise RmirError("An empty key cannot encrypt an RMIR; give a passphrase after ':'.")
    salt, prefix = os.urandom(16), os.urandom(7)
    enc_key, check_key = _derive(passphrase, salt, _SCRYPT_LOG2N, _SCRYPT_R, _SCRYPT_P)
    partial = _HEADER.pack(MAGIC, salt, _SCRYPT_LOG2N, _SCRYPT_R, _SCRYPT_P, prefix, CHUNK_SIZE, b"")
    header = _HEADER.pack(
        MAGIC, salt, _SCRYPT_LOG2N, _SCRYPT_R, _SCRYPT_P, prefix, CHUNK_SIZE,
        _key_check(check_key, partial[:-16]),
    )
    dst.write(header)
    aead = AESGCM(enc_key)
    index = 0
    chunk = src.read(CHUNK_SIZE)
    while True:
        following = src.read(CHUNK_SIZE)
        last = not following
        dst.write(aead.encrypt(_nonce(prefix, index, last), chunk, header))
        if last:
            return
        chunk, index = following, index + 1


class DecryptingReader(io.RawIOBase):
    """A read-only stream of the plaintext of an encrypted RMIR, checked chunk by chunk."""

    def __init__(self, src: BinaryIO, passphrase: str | None, where: str) -> None:
        super().__init__()
        self._src, self._where = src, where
        header = src.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise RmirError(f"{where} is truncated: its encryption header is incomplete.")
        magic, salt, log2n, r, p, prefix, chunk_size, check = _HEADER.unpack(header)
        if magic != MAGIC:
            raise RmirError(f"{where} is not an encrypted RMIR.")
        if not passphrase:
            raise WrongKeyError(
                f"{where} is encrypted; give its key as {where}:KEY "
                "(or set MODEL_DEPLOY_KEY in config.sh)."
            )
        if not 1024 <= chunk_size <= 64 << 20:
            raise RmirError(f"{where} has a corrupt encryption header (chunk size {chunk_size}).")
        enc_key, check_key = _derive(passphrase, salt, log2n, r, p)
        if not hmac.compare_digest(check, _key_check(check_key, header[:-16])):
            raise WrongKeyError(f"The key given for {where} is wrong; check the key after ':'.")
        self._aead, self._header, self._prefix = AESGCM(enc_key), header, prefix
        self._sealed = chunk_size + _TAG
        self._index, self._done = 0, False
        self._buf, self._pos = b"", 0
        self._ahead = src.read(self._sealed)

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        current = self._ahead
        self._ahead = self._src.read(self._sealed) if len(current) == self._sealed else b""
        last = not self._ahead
        if len(current) < _TAG:
            raise RmirError(f"{self._where} is truncated: its encrypted data ends early.")
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), current, self._header)
        except InvalidTag:
            raise RmirError(
                f"{self._where} failed its integrity check at block {self._index}: the file is "
                "truncated, corrupt or was altered; fetch or copy it again."
            ) from None
        self._index += 1
        self._done = last
        return plain

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]  # io passes these; typeshed: any buffer
        while self._pos >= len(self._buf) and not self._done:
            self._buf, self._pos = self._next_chunk(), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return n
