"""The whole path as an admin runs it: a collector process, events over real gRPC, CLI processes."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

from collector.evidence import keys
from protos import exfilguard_pb2 as pb
from tests.helpers import AgentStream, make_event, run_cli, start_collector, write_collector_config


def test_collector_creates_key_and_cli_exports_and_verifies(tmp_path: Path) -> None:
    config = write_collector_config(tmp_path)
    key_file = keys.key_dir(tmp_path) / keys.KEY_FILE
    assert not key_file.exists()
    with start_collector(config) as collector:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # made on first start
        with AgentStream(collector.address, "ws-1") as agent:
            batch = [make_event("ws-1", s) for s in range(1, 51)]
            batch[9] = make_event("ws-1", 10, file=pb.File(path='=HYPERLINK("http://x")', size=1))
            agent.send_events(batch)
            acks = [agent.ack()]
            while acks[-1] < 50 and len(acks) < 10:  # the hello is acknowledged first
                acks.append(agent.ack())
            assert acks[-1] == 50
        assert collector.stop() == 0

    pub = tmp_path / "collector.pub"
    done = run_cli("key", "export", "--config", str(config), "--out", str(pub))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "ws-1.csv"
    done = run_cli("export", "--config", str(config), "--format", "csv", "--out", str(out), "--agent", "ws-1")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 50
    assert rows[9]["file.path"] == '\'=HYPERLINK("http://x")'

    done = run_cli("verify", str(out), "--public-key", str(pub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: 50 records verified" in done.stdout

    out.write_text(out.read_text().replace("table-33.csv", "table-34.csv", 1))
    done = run_cli("verify", str(out), "--public-key", str(pub))
    assert done.returncode == 1
    assert "FAILED: altered (line 34, agent ws-1, sequence 33" in done.stdout
