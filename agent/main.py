"""`exfilguard-agent --config FILE`: wires identity, spool, sensors and transport, and nothing else does.

Lifecycle: load config (a bad one is one stderr line naming file:line:key, exit 2) ->
identity -> spool -> `agent.start` -> sensors -> transport. On SIGTERM/SIGINT: stop the
sensors, spool `agent.stop`, give the transport a bounded moment to deliver, close.

`--no-sensors` runs only the spool and the transport (agent.start says so). Together with
`--emit-test-events` it gives the delivery tests an exactly known event stream.

`--emit-test-events N` spools N `agent.test` events at start (event.reason says they are
synthetic, exfilguard.count numbers them 1..N). It exists for the end-to-end tests and
demos of delivery guarantees; it is a command-line flag so only whoever starts the agent
(root, via systemd) can use it, and the collector can tell these events apart by action.

Exit codes: 0 clean stop, 1 runtime failure (state directory, spool, a sensor the config
requires cannot run, e.g. `sensors.fanotify: on` without privilege), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import agent
from agent import config as agent_config
from agent import identity as agent_identity
from agent.sensors import Emit, Sensor
from agent.sensors.errors import SensorError
from agent.spool import Spool, SpoolError
from agent.transport import Transport, TransportConfigError
from protos import events
from protos import exfilguard_pb2 as pb
from protos.sdnotify import Notifier
from protos.yamlfile import YamlError

log = logging.getLogger("exfilguard.agent")

PROG = "exfilguard-agent"
CENTRAL_CONFIG_FILE = "central-config.json"  # last config pushed by the collector (not applied yet)
STOP_DRAIN_SECONDS = 3.0  # how long a clean stop may wait for the collector to take the backlog
MAX_TEST_EVENTS = 10_000_000
CAPABILITIES = ("spool", "gap", "heartbeat", "config-push")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: journald and log shippers parse it without regexes."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ExfilGuard endpoint agent: watches tagged files and removable media, "
        "spools events durably and streams them to the collector.",
    )
    parser.add_argument(
        "--config", default=agent_config.DEFAULT_PATH, metavar="FILE",
        help=f"agent.yaml (default {agent_config.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--emit-test-events", type=int, default=0, metavar="N",
        help="spool N synthetic agent.test events at start (delivery tests and demos)",
    )
    parser.add_argument(
        "--no-sensors", action="store_true",
        help="run only the spool and the transport (delivery tests; draining a spool); "
        "agent.start records that sensors were off",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {agent.__version__}")
    args = parser.parse_args(argv)
    if not 0 <= args.emit_test_events <= MAX_TEST_EVENTS:
        parser.error(f"--emit-test-events must be between 0 and {MAX_TEST_EVENTS}")
    return args


class Agent:
    """The running agent: owns the spool, the sensors and the transport."""

    def __init__(self, config: agent_config.AgentConfig, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.identity = agent_identity.load_or_create(config.state_dir)
        self.spool = Spool(
            config.state_dir,
            agent_id=self.identity.agent_id,
            version=agent.__version__,
            max_events=config.spool.max_events,
            max_bytes=config.spool.max_bytes,
            # An event the collector could never accept must not block the stream forever.
            max_event_bytes=config.max_message_bytes - 4096,
        )
        self.sensors: list[Sensor] = []
        self.transport = Transport(
            config, self.spool, self.identity,
            version=agent.__version__,
            capabilities=CAPABILITIES,
            on_config=self._store_central_config,
            config_version=self._central_config_version(),
        )

    def emit(self, event: pb.Event) -> None:
        """The Emit callback handed to sensors: stamp host facts, then spool."""
        if not event.host.name:
            event.host.name = self.identity.hostname
        if not event.host.id:
            event.host.id = self.identity.machine_id
        self.spool.append(event)

    def start(self, test_events: int = 0, sensors: bool = True) -> None:
        """Spool agent.start (and any test events), start the sensors and the transport."""
        reason = f"agent {agent.__version__} started, pid {os.getpid()}"
        if not sensors:
            reason += "; sensors off (--no-sensors)"  # visible at the collector: not a silent blind spot
        self.emit(events.new_event("agent.start", event=pb.EventInfo(reason=reason), process=_self_process()))
        for n in range(1, test_events + 1):
            self.emit(events.new_event(
                "agent.test",
                event=pb.EventInfo(reason="synthetic test event (--emit-test-events)"),
                exfilguard=pb.Extensions(count=n),
            ))
        if test_events:
            log.info("spooled %d synthetic agent.test events", test_events)
        for sensor in _build_sensors(self.config, self.emit) if sensors else []:
            try:
                sensor.start()
            except SensorError:
                raise  # the config asked for something this host cannot do: say so and stop
            except Exception:
                # A bug in one sensor must not take the others (or the spool) down.
                log.exception("sensor %s failed to start; continuing without it", sensor.name)
                continue
            self.sensors.append(sensor)
        self.transport.capabilities += [f"sensor:{s.name}" for s in self.sensors]
        self.transport.start()
        log.info(
            "agent %s started: id=%s host=%s collector=%s sensors=[%s] backlog=%d",
            agent.__version__, self.identity.agent_id, self.identity.hostname, self.config.collector,
            ", ".join(s.name for s in self.sensors), self.spool.backlog(),
        )

    def stop(self, reason: str) -> None:
        """Stop sensors, spool agent.stop, deliver what we can within a bound, close the spool."""
        for sensor in reversed(self.sensors):
            try:
                sensor.stop()
            except Exception:
                log.exception("sensor %s failed to stop cleanly", sensor.name)
        self.emit(events.new_event("agent.stop", event=pb.EventInfo(reason=reason), process=_self_process()))
        self.spool.flush(STOP_DRAIN_SECONDS)
        self.transport.stop(STOP_DRAIN_SECONDS)
        backlog = self.spool.backlog()
        self.spool.close()
        log.info("agent stopped (%s); %d events stay spooled for the next start", reason, backlog)

    # ------------------------------------------------------------ central config

    def _central_config_path(self) -> Path:
        return Path(self.config.state_dir) / CENTRAL_CONFIG_FILE

    def _central_config_version(self) -> str:
        try:
            stored = json.loads(self._central_config_path().read_text(encoding="utf-8"))
            return str(stored.get("version", ""))
        except (OSError, ValueError, AttributeError):
            return ""

    def _store_central_config(self, message: pb.AgentConfig) -> None:
        # Applying pushed config comes later; keeping it means the next Hello reports it.
        data = json.dumps({"version": message.version, "yaml": message.yaml}).encode()
        try:
            agent_identity.write_atomic(self._central_config_path(), data)
        except OSError as exc:
            log.error("cannot store pushed configuration version %r: %s", message.version, exc)
            return
        self.transport.config_version = message.version
        log.info("stored configuration version %r from the collector (not applied yet)", message.version)


def _self_process() -> pb.Process:
    return pb.Process(
        pid=os.getpid(), executable=sys.executable, name=PROG,
        command_line=" ".join(sys.argv)[:4096], parent=pb.ParentProcess(pid=os.getppid()),
    )


def _build_sensors(config: agent_config.AgentConfig, emit: Emit) -> list[Sensor]:
    import agent.sensors as sensors_package

    build = getattr(sensors_package, "build_sensors", None)
    if build is None:
        log.warning("no sensors are available in this build (agent.sensors.build_sensors missing)")
        return []
    return list(build(config, emit))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `exfilguard-agent`."""
    args = _parse_args(argv)
    # gRPC core prints unstructured INFO lines (GOAWAY, reconnects) to stderr; our own JSON
    # logs already say what matters. Read by gRPC when it initialises, i.e. after this point.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        config = agent_config.load(args.config)
    except YamlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    try:
        running = Agent(config, args.config)
    except TransportConfigError as exc:
        print(f"{PROG}: {args.config}: {exc}", file=sys.stderr)
        return 2
    except (agent_identity.IdentityError, SpoolError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        running.start(args.emit_test_events, sensors=not args.no_sensors)
    except SensorError as exc:
        print(f"{PROG}: {args.config}: sensors: {exc}", file=sys.stderr)
        running.stop(f"sensor failed to start: {exc}")
        return 1
    notifier = Notifier.from_environment()
    notifier.ready(status=f"streaming to {config.collector}")
    # Pinged from the main thread: a wedged main loop stops the pings and systemd restarts us.
    while not stop.wait(notifier.ping_interval):
        notifier.ping()
    notifier.stopping(status=f"stopping ({received[0] if received else 'request'})")
    running.stop(f"stopped by {received[0] if received else 'request'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
