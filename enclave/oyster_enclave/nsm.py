"""The Nitro Secure Module (``/dev/nsm``): ask it for an attestation document.

The device takes one ioctl, ``NSM_IOCTL_REQUEST`` = ``_IOWR(0x0A, 0, struct nsm_message)``, whose
argument holds two iovecs: the request (CBOR, at most 4 KiB) and a buffer for the response (CBOR,
at most 12 KiB; the driver sets its length). An attestation request is the CBOR map
``{"Attestation": {"user_data": bytes|null, "nonce": bytes|null, "public_key": bytes|null}}``; the
answer ``{"Attestation": {"document": bytes}}`` (a COSE_Sign1 document signed by AWS's Nitro
PKI, holding the PCRs and the fields asked for) or ``{"Error": "<ErrorCode>"}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

from oyster_enclave import cbor

DEVICE = "/dev/nsm"
REQUEST_MAX = 0x1000
RESPONSE_MAX = 0x3000


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class NsmMessage(ctypes.Structure):
    _fields_ = [("request", IoVec), ("response", IoVec)]


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


NSM_IOCTL_REQUEST = _iowr(0x0A, 0, ctypes.sizeof(NsmMessage))

# ioctl(fd, request, pointer to struct nsm_message) -> 0 or -1 with errno set
Ioctl = Callable[[int, int, Any], int]


def _libc_ioctl() -> Ioctl:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    libc.ioctl.restype = ctypes.c_int
    ioctl: Ioctl = libc.ioctl
    return ioctl


class NsmError(RuntimeError):
    """The device is missing, refused the request, or answered something unexpected."""


class Nsm:
    def __init__(self, device: str = DEVICE, ioctl: Ioctl | None = None) -> None:
        self.device = device
        self._ioctl = ioctl

    def request(self, message: dict[str, Any]) -> Any:
        """One CBOR request, its decoded CBOR response."""
        raw = cbor.encode(message)
        if len(raw) > REQUEST_MAX:
            raise NsmError(f"NSM request of {len(raw)} bytes exceeds {REQUEST_MAX}")
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise NsmError(
                f"cannot open {self.device}: {e.strerror} (attestation needs a Nitro enclave)"
            ) from e
        try:
            request = ctypes.create_string_buffer(raw, len(raw))
            response = ctypes.create_string_buffer(RESPONSE_MAX)
            msg = NsmMessage(
                IoVec(ctypes.cast(request, ctypes.c_void_p), len(raw)),
                IoVec(ctypes.cast(response, ctypes.c_void_p), RESPONSE_MAX),
            )
            ioctl = self._ioctl or _libc_ioctl()
            if ioctl(fd, NSM_IOCTL_REQUEST, ctypes.byref(msg)) != 0:
                errno = ctypes.get_errno()
                raise NsmError(f"NSM ioctl failed: {os.strerror(errno) if errno else 'error'}")
            length = msg.response.iov_len
            if not 0 < length <= RESPONSE_MAX:
                raise NsmError(f"NSM answered {length} bytes")
            try:
                return cbor.decode(response.raw[:length])
            except ValueError as e:
                raise NsmError(f"NSM answered malformed CBOR: {e}") from e
        finally:
            os.close(fd)

    def attestation(
        self, public_key: bytes | None, user_data: bytes | None = None, nonce: bytes | None = None
    ) -> bytes:
        """The attestation document (COSE_Sign1 bytes) binding ``public_key`` and ``user_data``."""
        answer = self.request(
            {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
        )
        if isinstance(answer, dict) and "Error" in answer:
            raise NsmError(f"NSM refused the attestation: {answer['Error']}")
        try:
            document = answer["Attestation"]["document"]
        except (KeyError, TypeError):
            document = None
        if not isinstance(document, bytes):
            raise NsmError(f"NSM answered no attestation document: {str(answer)[:200]}")
        return document


def document_fields(document: bytes) -> dict[str, Any]:
    """The payload of an attestation document: ``module_id``, ``timestamp`` (ms), ``pcrs``
    (index -> bytes), ``public_key``, ``user_data``, ``nonce``, ``certificate``, ``cabundle``.

    It only decodes: the COSE signature and the certificate chain to the AWS Nitro root are NOT
    checked here (an attestation verifier does that before the chain trusts the document).
    """
    try:
        envelope = cbor.decode(document)
        if not isinstance(envelope, list) or len(envelope) != 4:
            raise ValueError("not a COSE_Sign1 array of 4")
        payload = cbor.decode(envelope[2])
    except (ValueError, TypeError) as e:
        raise NsmError(f"not an attestation document: {e}") from e
    if not isinstance(payload, dict) or "pcrs" not in payload:
        raise NsmError("not an attestation document: no pcrs in its payload")
    return payload
