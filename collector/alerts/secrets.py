"""What a sink or destination reads to reach its receiver: secret header values (webhook tokens, a
PagerDuty routing key) from a file or the environment, and the TLS context of its CA bundle
and client certificate.

The config names where a secret is, never the secret itself (configs end up in tickets and
backups); the value is read once when the sink is built and is never logged or put in an error.
"""

from __future__ import annotations

import os
import ssl

from collector.alerts.errors import SinkFileError, SinkSetupError
from collector.config import HeaderValue, SecretRef
from common.files import read_limited

MAX_SECRET_BYTES = 8192


def read_secret(ref: SecretRef | HeaderValue, what: str) -> str:
    """The secret `ref` points at (prefix included), stripped of surrounding white space.

    A plain header value (`value`) is returned as it is.

    Raises SinkSetupError naming the file or variable (and `what` it is for), never the value.
    """
    if isinstance(ref, HeaderValue) and ref.value is not None:
        return ref.prefix + ref.value
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SinkSetupError(f"${ref.env}", f"{what}: the environment variable is not set or empty")
    else:
        assert ref.file is not None
        data = read_limited(
            ref.file,
            MAX_SECRET_BYTES,
            SinkFileError,
            too_large=f"{what}: larger than {MAX_SECRET_BYTES} bytes",
            cannot_read=f"{what}: cannot read: ",
        )
        value = data.decode("ascii").strip() if data.isascii() else ""
        if not value:
            raise SinkFileError(ref.file, f"{what}: the file is empty or not ASCII text")
    value = value.strip()
    if any(c in value for c in "\r\n\0"):  # it would end the header and start another
        where = f"${ref.env}" if ref.env is not None else str(ref.file)
        raise SinkSetupError(where, f"{what}: holds a line break or NUL")
    return ref.prefix + value


def tls_context(
    ca: str | None, what: str, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """A client TLS context verifying against `ca` (default: the system's trust store), with a
    client certificate when `cert` and `key` are set; SinkFileError names a file that will not load."""
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise SinkFileError(str(ca), f"{what}: cannot load the CA bundle: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise SinkFileError(cert, f"{what}: cannot load the client certificate and key: {exc}") from exc
    return context
