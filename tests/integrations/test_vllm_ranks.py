"""The channel between a language engine's scheduler and its ranks (kvferry.integrations.vllm
.ranks): real ZeroMQ sockets, in order, queued for a peer that is not there yet, and kept where
only the engine's user can reach them."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvferry.integrations.vllm.ranks import (
    MAX_SOCKET_PATH,
    Message,
    address,
    engine_name,
    rank_channel,
    scheduler_channel,
    socket_dir,
)


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime dir as systemd makes them: short (a socket's path has 107 bytes)."""
    path = Path(tempfile.mkdtemp(dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path)


class Inbox:
    """What a side heard, and a wait for the N-th message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._grew = asyncio.Event()

    def __call__(self, m: Message) -> None:
        self.messages.append(m)
        self._grew.set()

    async def holding(self, n: int) -> None:
        while len(self.messages) < n:
            self._grew.clear()
            await self._grew.wait()


def test_the_scheduler_and_its_ranks_hear_each_other_in_order(runtime_dir: Path) -> None:
    engine = engine_name(uuid.uuid4().hex, 0)

    async def main() -> None:
        # The scheduler speaks first, to ranks that are not up yet: its messages wait for them.
        scheduler = scheduler_channel(engine, 2)
        for n in range(3):
            await scheduler.send({"op": "stage", "n": n})
        ranks = [rank_channel(engine, r) for r in range(2)]
        heard, answers = [Inbox(), Inbox()], Inbox()
        serving = [asyncio.ensure_future(ch.serve(heard[r])) for r, ch in enumerate(ranks)]
        serving.append(asyncio.ensure_future(scheduler.serve(answers)))
        try:
            async with asyncio.timeout(30):  # bounds a hang only
                await asyncio.gather(*(h.holding(3) for h in heard))
                for r, ch in enumerate(ranks):
                    await ch.send({"op": "staged", "rank": r})
                await scheduler.send({"op": "drop"}, to=1)
                await asyncio.gather(answers.holding(2), heard[1].holding(4))
        finally:
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
            for ch in [scheduler, *ranks]:
                ch.close()
        assert [m["n"] for m in heard[0].messages] == [0, 1, 2]  # every rank, in order
        assert heard[1].messages[-1] == {"op": "drop"} and len(heard[0].messages) == 3
        assert sorted(m["rank"] for m in answers.messages) == [0, 1]

    asyncio.run(main())
    assert not list(socket_dir().iterdir())  # each side removed its socket


def test_the_sockets_live_where_only_this_user_can_reach_them(runtime_dir: Path) -> None:
    path = socket_dir()
    assert path.parent == runtime_dir and path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o755)  # opened up by someone: whoever connects could steer the ranks
    with pytest.raises(PermissionError, match="mode 700"):
        socket_dir()
    os.rmdir(path)
    assert socket_dir() == path  # made anew


def test_a_long_runtime_dir_or_engine_id_still_makes_a_socket_path_that_fits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    engine = engine_name("an-engine-id-set-by-hand-" + "x" * 80, 3)
    path = address(engine, "rank7").removeprefix("ipc://")
    assert len(path) <= MAX_SOCKET_PATH and path.startswith("/tmp/kvferry-vllm-")
    assert address(engine, "rank7") != address(engine_name("another", 3), "rank7")


def test_a_message_that_cannot_be_handled_does_not_stop_the_inbox(runtime_dir: Path) -> None:
    engine = engine_name(uuid.uuid4().hex, 0)

    async def main() -> None:
        scheduler, rank = scheduler_channel(engine, 1), rank_channel(engine, 0)
        inbox = Inbox()

        def handle(m: Message) -> None:
            if m.get("op") == "boom":
                raise KeyError("a field the handler needs")
            inbox(m)

        serving = asyncio.ensure_future(rank.serve(handle))
        try:
            async with asyncio.timeout(30):  # bounds a hang only
                await scheduler.send({"op": "boom"})
                await scheduler.send({"op": "stage"})
                await inbox.holding(1)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            scheduler.close()
            rank.close()
        assert inbox.messages == [{"op": "stage"}]

    asyncio.run(main())
