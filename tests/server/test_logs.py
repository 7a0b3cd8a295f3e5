"""The server's log and its memory of failures: one structured line per transfer that ends, one
format on one stream, and the recent failures in Stats and `kvferry status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import start_server, wait_until


def test_every_ending_is_one_json_line_and_failures_are_remembered() -> None:
    srv = start_server(bootstrap_timeout=0.3)
    try:
        ch, stub = srv.stub()
        with ch:
            stub.Open(pb.OpenRequest(transfer_id="ok", window_tokens=8))
            stub.Push(iter([pb.PushRequest(transfer_id="ok", total_tokens=4, rows=bytes(4 * 64))]))
            stub.Release(pb.ReleaseRequest(transfer_id="ok"))
            stub.Open(pb.OpenRequest(transfer_id="aborted", window_tokens=8))
            stub.Abort(pb.AbortRequest(transfer_id="aborted", reason="the user went away"))
            stub.Release(pb.ReleaseRequest(transfer_id="aborted"))
            stub.Open(pb.OpenRequest(transfer_id="lonely", window_tokens=8))  # no sender comes
            wait_until(lambda: stub.Poll(pb.PollRequest(transfer_id="lonely")).state
                       == pb.TRANSFER_STATE_FAILED, "the bootstrap timeout")
            stats = stub.Stats(pb.StatsRequest())
        # Newest first, with their reasons, the released one included.
        failed = [(s.status.transfer_id, s.outcome) for s in stats.recent_failures]
        assert failed == [("lonely", "bootstrap_timeout"), ("aborted", "aborted")]
        assert "the user went away" in stats.recent_failures[1].status.failure_reason
        status = subprocess.run([sys.executable, "-m", "kvferry.server", "status", "--target",
                                 srv.target], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "COLUMNS": "200"})
        assert status.returncode == 0, status.stderr
        assert "recent failures (2)" in status.stdout and "bootstrap_timeout" in status.stdout
    finally:
        assert srv.stop() == 0
    lines = [line for line in srv.output if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON: one format, one stream
    assert events[0]["event"] == "serving" and events[-1]["event"] == "stopped"
    ended = {e["transfer_id"]: e for e in events if e["event"] == "transfer_finished"}
    assert ended["ok"]["outcome"] == "success" and ended["ok"]["level"] == "INFO"
    assert ended["ok"]["sent_tokens"] == 4 and ended["ok"]["windows"] == 1
    assert ended["aborted"]["level"] == "INFO" and "went away" in ended["aborted"]["reason"]
    assert ended["lonely"]["level"] == "WARNING" and ended["lonely"]["outcome"] == "bootstrap_timeout"
    assert len({e["incarnation"] for e in ended.values()}) == 3  # each opening numbered apart
    for e in ended.values():
        assert isinstance(e["duration_seconds"], float)
    # Not a speed check: a transfer cannot end by bootstrap timeout before that timeout passed.
    assert ended["lonely"]["duration_seconds"] >= 0.3


def test_text_logs_for_people() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kvferry.server", "serve", "--port", "0",
                             "--metrics-port", "0", "--log-format", "text"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " INFO    serving grpc_port=" in first and not first.startswith("{")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and " stopped" in out and err == ""
