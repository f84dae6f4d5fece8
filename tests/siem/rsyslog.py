"""A real Debian rsyslogd receiving syslog over TLS (RFC 5425) on loopback, for tests and bench.forward.

    with Rsyslog.start(tmp_path) as receiver:     # its own CA and server certificate
        receiver.address, receiver.ca_path        # what a sink or forward destination needs
        receiver.wait_for(10)                     # the MSG parts written so far, at least 10

rsyslogd runs in the foreground (-n) with a config of its own: imtcp with the gtls stream
driver in TLS mode (anonymous client auth: the receiver checks nothing of ours, we check its
certificate), every message's MSG part written one a line to `out.log`.
`stop()` / `restart()` let a test take the receiver away and bring it back on the same port.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from collector.tls import pki
from tests.helpers import free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

_CONF = """
global(
  workDirectory="{dir}"
  maxMessageSize="256k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"
       MaxSessions="100")
template(name="msgonly" type="string" string="%msg%\\n")
input(type="imtcp" port="{port}" ruleset="exfilguard")
ruleset(name="exfilguard") {{
  action(type="omfile" file="{out}" template="msgonly" flushOnTXEnd="on" asyncWriting="off")
}}
"""


class RsyslogUnavailable(RuntimeError):
    """rsyslogd (with rsyslog-gnutls) is not installed, or did not start."""


class Rsyslog:
    """One rsyslogd process listening for syslog over TLS on 127.0.0.1."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.address = f"127.0.0.1:{port}"
        authority = pki.CertificateAuthority(directory / "pki")
        authority.init_ca("Syslog test CA")
        server = authority.issue_server("127.0.0.1", ["localhost"])
        assert server.cert_path is not None and server.key_path is not None
        self.ca_path = authority.ca_cert_path
        self.out = directory / "out.log"
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(
            _CONF.format(
                dir=directory, ca=self.ca_path, cert=server.cert_path, key=server.key_path, port=port,
                out=self.out,
            )
        )
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, port: int | None = None) -> Rsyslog:
        """Configure and start a receiver in `directory` (created); RsyslogUnavailable if it cannot."""
        if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
            raise RsyslogUnavailable("rsyslogd with rsyslog-gnutls is not installed (scripts/bootstrap)")
        directory.mkdir(parents=True, exist_ok=True)
        receiver = cls(directory, port or free_port())
        receiver.restart()
        return receiver

    def restart(self) -> None:
        """Start rsyslogd (again, on the same port) and wait until it accepts connections."""
        self.stop()
        pidfile = self.directory / "rsyslogd.pid"
        with (self.directory / "rsyslogd.err").open("ab") as errors:  # the child keeps its own copy
            self._process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pidfile)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = (self.directory / "rsyslogd.err").read_text(errors="replace")[-2000:]
                raise RsyslogUnavailable(f"rsyslogd exited with {self._process.returncode}: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RsyslogUnavailable(f"rsyslogd did not listen on {self.address} within 15 s")

    def stop(self) -> None:
        """Stop rsyslogd (what it received stays in `out.log`)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def lines(self) -> list[str]:
        """The MSG parts received so far, one per message."""
        if not self.out.exists():
            return []
        return self.out.read_text(errors="replace").splitlines()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[str]:
        """Poll (bounded) until at least `n` messages were written; returns them all."""
        deadline = time.monotonic() + timeout
        lines = self.lines()
        while len(lines) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            lines = self.lines()
        return lines

    def __enter__(self) -> Rsyslog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
