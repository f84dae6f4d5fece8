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
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import agent
from agent import central
from agent import identity as agent_identity
from agent.prevent import grants as prevent_grants
from agent.prevent.guard import ContentGuard
from agent.sensors import Sensor
from agent.sensors.errors import SensorError
from agent.sensors.wiring import build_sensors, hold_started, release_started, take_exceptions
from agent.spool import Spool, SpoolError
from agent.transport import Transport, TransportConfigError
from common import agentconfig as agent_config
from common import logs
from common.sdnotify import Notifier
from common.yamlfile import YamlError
from protos import events
from protos import exfilguard_pb2 as pb

log = logging.getLogger("exfilguard.agent")

PROG = "exfilguard-agent"
STOP_DRAIN_SECONDS = 3.0  # how long a clean stop may wait for the collector to take the backlog
HANDOVER_SECONDS = 5.0  # a rebuild: how long the old content guard waits for the new one to guard sticks
MAX_TEST_EVENTS = 10_000_000
CAPABILITIES = ("spool", "gap", "heartbeat", "config-push")


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
    """The running agent: owns the spool, the sensors and the transport.

    `local_config` is agent.yaml; `config` is what runs: the central config the collector
    pushed (kept in state_dir) merged over it. A push is applied live on a thread of its own:
    the sensors are stopped and rebuilt when tags, removable, sensors or prevent settings change
    (a change of the grants alone is handed to the guard in place).
    """

    def __init__(self, config: agent_config.AgentConfig, config_path: str) -> None:
        self.local_config = config
        self.config_path = config_path
        self.central = central.CentralConfigFile(config.state_dir)
        self.config_version = ""  # central config version running ("": agent.yaml alone)
        self.config = config
        try:
            stored = self.central.load()
            self.config = central.effective(config, stored)
            self.config_version = stored.version if stored is not None else ""
        except central.CentralConfigError as exc:
            log.error("stored central config not used, running agent.yaml alone: %s", exc)
        if self.config.log_level != config.log_level:
            logging.getLogger().setLevel(self.config.log_level.upper())
        self._sensors_on = True
        self._stopping = False
        self._apply_lock = threading.Lock()  # sensors are rebuilt by one thread at a time, never during stop
        self._pending_lock = threading.Lock()
        self._pending: tuple[central.PushedConfig, agent_config.AgentConfig] | None = None
        self._applier: threading.Thread | None = None
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
            on_config=self._on_central_config,
            config_version=self.config_version,
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
        self._sensors_on = sensors
        if sensors:
            try:
                self._start_sensors(self.config)
            except SensorError as exc:
                if not self.config_version:
                    raise  # agent.yaml asked for something this host cannot do: say so and stop
                # A pushed setting must not keep the agent down for good: run agent.yaml alone.
                log.error("central config %r cannot run here (%s); running agent.yaml alone",
                          self.config_version, exc)
                self._emit_config("refused", self.config_version, f"sensors: {exc}")
                self.config, self.config_version = self.local_config, ""
                self.transport.reconfigure(self.config, "")
                self._start_sensors(self.config)
        self.transport.start()
        log.info(
            "agent %s started: id=%s host=%s collector=%s sensors=[%s] backlog=%d central_config=%s",
            agent.__version__, self.identity.agent_id, self.identity.hostname,
            ",".join(self.config.collectors),
            ", ".join(s.name for s in self.sensors), self.spool.backlog(), self.config_version or "none",
        )

    def _start_sensors(self, config: agent_config.AgentConfig) -> None:
        """Build and start every sensor for `config`; on SensorError stop the ones started, re-raise."""
        for sensor in build_sensors(config, self.emit):
            try:
                sensor.start()
            except SensorError:
                self._stop_sensors()
                raise
            except Exception:
                # A bug in one sensor must not take the others (or the spool) down.
                log.exception("sensor %s failed to start; continuing without it", sensor.name)
                continue
            self.sensors.append(sensor)
        hold_started()
        # Sent in the next hello.
        self.transport.capabilities = [c for c in self.transport.capabilities if not c.startswith("sensor:")]
        self.transport.capabilities += [f"sensor:{s.name}" for s in self.sensors]

    def _stop_sensors(self, keep: Sequence[Sensor] = ()) -> None:
        release_started()
        for sensor in reversed(self.sensors):
            if sensor in keep:
                continue
            try:
                sensor.stop()
            except Exception:
                log.exception("sensor %s failed to stop cleanly", sensor.name)
        self.sensors = []

    def stop(self, reason: str) -> None:
        """Stop sensors, spool agent.stop, deliver what we can within a bound, close the spool."""
        with self._apply_lock:  # waits for a config being applied; none starts after this
            self._stopping = True
            self._stop_sensors()
        # How many events this run produced, this one included: with the gaps, the collector
        # can check that each of them was stored or counted lost.
        made = self.spool.appended + 1
        self.emit(events.new_event("agent.stop", event=pb.EventInfo(reason=reason), process=_self_process(),
                                   exfilguard=pb.Extensions(count=made)))
        self.spool.flush(STOP_DRAIN_SECONDS)
        self.transport.stop(STOP_DRAIN_SECONDS)
        backlog = self.spool.backlog()
        self.spool.close()
        log.info("agent stopped (%s); %d events stay spooled for the next start", reason, backlog)

    # ------------------------------------------------------------ central config

    def _on_central_config(self, message: pb.AgentConfig) -> None:
        """Transport callback: check a pushed config now, apply it on the config thread."""
        try:
            pushed = central.parse(message.version, message.yaml)
            new = central.effective(self.local_config, pushed)
        except central.CentralConfigError as exc:
            log.error("refused %s; still running central config %r", exc, self.config_version or "none")
            self._emit_config("refused", exc.version, str(exc))
            return
        try:  # the grant key is trusted as it arrives over the stream, never as read back from disk
            prevent_grants.pin(self.local_config.state_dir, new.prevent.grant_key)
        except OSError as exc:
            log.error("cannot pin the collector's grant key: %s", exc)
        with self._pending_lock:
            self._pending = (pushed, new)  # a newer push replaces one not applied yet
            if self._applier is None:
                self._applier = threading.Thread(
                    target=self._apply_pending, name="central-config", daemon=True
                )
                self._applier.start()

    def _apply_pending(self) -> None:
        while True:
            with self._pending_lock:
                item, self._pending = self._pending, None
                if item is None:
                    self._applier = None
                    return
            try:
                self._apply(*item)
            except Exception:
                log.exception("applying central config %r failed", item[0].version)

    def _apply(self, pushed: central.PushedConfig, new: agent_config.AgentConfig) -> None:
        """Run `new`: rebuild the sensors if what they watch changed, persist, report the version."""
        with self._apply_lock:
            if self._stopping:
                return
            old, started = self.config, time.monotonic()
            rebuilt = self._sensors_on and _watch_settings(old) != _watch_settings(new)
            if rebuilt:
                # the content guard goes on guarding the sticks until the new sensors' guard does
                guards = [s for s in self.sensors if isinstance(s, ContentGuard)]
                self._stop_sensors(keep=guards)
                try:
                    self._start_sensors(new)
                except SensorError as exc:
                    log.error("refused central config %r: sensors: %s; back to %r",
                              pushed.version, exc, self.config_version or "none")
                    self._emit_config("refused", pushed.version, f"sensors: {exc}")
                    try:
                        self._start_sensors(old)
                    except SensorError:
                        log.exception("sensors cannot restart with the previous config either")
                    return
                finally:
                    self._hand_over(guards)
            elif self._sensors_on and old.prevent.exceptions != new.prevent.exceptions:
                take_exceptions(self.sensors, new, self.emit)  # only grants changed: no rebuild
            try:
                self.central.save(pushed)
            except OSError as exc:  # it runs now; the next start falls back to what was stored
                log.error("cannot store central config %r: %s", pushed.version, exc)
            self.config, self.config_version = new, pushed.version
            if new.log_level != old.log_level:
                logging.getLogger().setLevel(new.log_level.upper())
            self.transport.reconfigure(new, pushed.version)
            took = time.monotonic() - started
            what = f"sensors rebuilt in {took:.2f}s" if rebuilt else "sensors unchanged"
            self._emit_config("applied", pushed.version, f"{len(new.tags)} tagged paths; {what}")
            log.info("applied central config %r (%d tagged paths; %s)",
                     pushed.version or "none", len(new.tags), what)

    def _hand_over(self, previous: Sequence[ContentGuard]) -> None:
        """Stop the previous sensors' content guards once the running ones guard every stick they
        did (at once when none runs now; at most HANDOVER_SECONDS): a rebuild must not leave a
        stick writable unguarded for the moment it takes. Meanwhile both answer, each as its
        config says; an open goes on only when both allow it."""
        if not previous:
            return
        current = [s for s in self.sensors if isinstance(s, ContentGuard)]
        wanted = {point for guard in previous for point in guard.watching()}
        deadline = time.monotonic() + HANDOVER_SECONDS
        while current and time.monotonic() < deadline and not wanted <= {
                point for guard in current for point in guard.watching()}:
            time.sleep(0.01)
        for guard in current:  # who carries tagged data: the sticks stay armed for them
            for old in previous:
                guard.adopt(old)
        for guard in previous:
            try:
                guard.stop()
            except Exception:
                log.exception("the previous content guard failed to stop cleanly")

    def _emit_config(self, outcome: str, version: str, detail: str) -> None:
        """agent.config into the evidence trail: which central config was applied or refused, and why."""
        tags = sorted({t for ts in self.config.tags.values() for t in ts})  # of the config running now
        label = version or "none (agent.yaml alone)"
        self.emit(events.new_event(
            "agent.config",
            event=pb.EventInfo(reason=f"central config {label} {outcome}: {detail}"[:4096]),
            exfilguard=pb.Extensions(config_version=version),
            tags=tags,
        ))


def _watch_settings(config: agent_config.AgentConfig) -> tuple[object, ...]:
    """What the sensors are built from: a change here means stop and rebuild them. The grants
    (prevent.exceptions) are handed over live instead (wiring.take_exceptions)."""
    prevent = config.prevent.model_copy(update={"exceptions": [], "grant_key": ""})
    return (config.tags, config.removable, config.sensors, prevent)


def _self_process() -> pb.Process:
    return pb.Process(
        pid=os.getpid(), executable=sys.executable, name=PROG,
        command_line=" ".join(sys.argv)[:4096], parent=pb.ParentProcess(pid=os.getppid()),
    )


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
    logs.configure(config.log_level)
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
    notifier.ready(status=f"streaming to {', '.join(config.collectors)}")
    # Pinged from the main thread: a wedged main loop stops the pings and systemd restarts us.
    while not stop.wait(notifier.ping_interval):
        notifier.ping()
    notifier.stopping(status=f"stopping ({received[0] if received else 'request'})")
    running.stop(f"stopped by {received[0] if received else 'request'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
