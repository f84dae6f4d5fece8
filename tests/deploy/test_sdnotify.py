"""sd_notify: READY, WATCHDOG, STOPPING and STATUS reach a real datagram socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.sdnotify import Notifier
from tests.deploy.notify_socket import NotifySocket


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path, abstract=request.param)
    yield sock
    sock.close()


def test_ready_status_stopping_arrive(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.ready(status="serving") is True
    assert notifier.stopping() is True
    messages = notify_socket.wait_for("STOPPING=1")
    assert messages[0].splitlines() == ["READY=1", "STATUS=serving"]


def test_status_cannot_forge_other_lines(notify_socket: NotifySocket) -> None:
    notifier = Notifier(address=notify_socket.address)
    notifier.status("ok\nREADY=1")
    messages = notify_socket.wait_for("STATUS=ok READY=1")
    assert "READY=1" not in messages[0].splitlines()


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False
    with notifier.watchdog() as pinger:
        assert pinger is None


def test_unreachable_socket_does_not_raise(tmp_path: Path) -> None:
    assert Notifier(address=str(tmp_path / "gone.sock")).ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(env).ping_interval == 15.0


def test_watchdog_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(env).ping_interval is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}).ping_interval is None


def test_watchdog_thread_pings_repeatedly(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"}  # ping every 50 ms
    notifier = Notifier.from_environment(env)
    with notifier.watchdog() as pinger:
        assert pinger is not None
        notify_socket.wait_for("WATCHDOG=1", count=3)
    count = len(notify_socket.drain())
    # Stopped means stopped: nothing more arrives after the block (checked after 3 intervals).
    with pytest.raises(AssertionError):
        notify_socket.wait_for("WATCHDOG=1", count=count + 1, timeout=0.15)


def test_watchdog_task_pings_from_the_event_loop(notify_socket: NotifySocket) -> None:
    notifier = Notifier(address=notify_socket.address, watchdog_seconds=0.1)

    async def run() -> None:
        task = asyncio.create_task(notifier.watchdog_task())
        await asyncio.sleep(0)
        # Bounded: the socket read below waits on a thread so the loop keeps pinging.
        await asyncio.to_thread(notify_socket.wait_for, "WATCHDOG=1", 10.0, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_agent_process_sends_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """The real exfilguard-agent under a stand-in NOTIFY_SOCKET (no collector needed: it spools)."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "agent.yaml"
    config.write_text(
        "collector: 127.0.0.1:9\ntls: {insecure_loopback: true}\nstate_dir: state\n",
        encoding="utf-8",
    )
    sock = NotifySocket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.main", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        sock.wait_for("READY=1", timeout=30)
        sock.wait_for("WATCHDOG=1", count=2)
        proc.send_signal(signal.SIGTERM)
        sock.wait_for("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        sock.close()


def test_collector_process_sends_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """The real exfilguard-collector under a stand-in NOTIFY_SOCKET: READY once serving, then pings."""
    import signal

    from tests.helpers import start_collector, write_collector_config

    sock = NotifySocket(tmp_path)
    env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "200000"}
    try:
        with start_collector(write_collector_config(tmp_path / "collector"), env=env) as collector:
            messages = sock.wait_for("READY=1", timeout=30)
            assert any(line.startswith("STATUS=serving") for m in messages for line in m.splitlines())
            sock.wait_for("WATCHDOG=1", count=2)
            collector.process.send_signal(signal.SIGTERM)
            sock.wait_for("STOPPING=1")
            assert collector.process.wait(timeout=30) == 0
    finally:
        sock.close()
