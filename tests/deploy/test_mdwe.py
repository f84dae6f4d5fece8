"""MemoryDenyWriteExecute= in both units: the daemons' libraries work without W+X memory.

systemd enforces it with seccomp; the kernel's own PR_SET_MDWE (Linux 6.3+) refuses the same
thing (mappings that are, or become, writable and executable), so a child process that sets it
and then does what the daemons do proves the setting will not crash them at start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("unsupported", ctypes.get_errno()); sys.exit(3)
import mmap
try:  # the guard is on: W+X memory is refused from here on
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("W+X allowed"); sys.exit(4)
except OSError:
    pass
from concurrent import futures
import sqlite3, psutil, pyudev, yaml, pydantic, grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from collector.tls import pki
ca = pki.CertificateAuthority(sys.argv[1]); ca.init_ca(); ca.issue_server("localhost", ["127.0.0.1"])
agent = ca.issue_agent("a1")
server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
creds = grpc.ssl_server_credentials([(ca.server_key_path.read_bytes(), ca.server_cert_path.read_bytes())],
                                    ca.ca_cert_path.read_bytes(), True)
port = server.add_secure_port("127.0.0.1:0", creds); server.start()
channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
    ca.ca_cert_path.read_bytes(), agent.key_path.read_bytes(), agent.cert_path.read_bytes()))
assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
db = sqlite3.connect(sys.argv[1] + "/t.db")
db.execute("pragma journal_mode=wal"); db.execute("create table t(x)")
list(pyudev.Context().list_devices(subsystem="block")); psutil.Process().exe()
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # a libffi closure
assert callback(1) == 2
server.stop(None); print("ok")
"""


def test_daemon_libraries_run_without_writable_executable_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode == 3:
        pytest.skip(f"this kernel has no PR_SET_MDWE (Linux 6.3+): {done.stdout.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok"
