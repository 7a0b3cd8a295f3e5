"""The scenario that started kvferry, through a real server: the allocator hands every window the
same block indices, three tensor-parallel ranks send every resume, and the transfer must finish."""

from __future__ import annotations

import asyncio
import hashlib

from support.kvserver import ServerProcess
from support.scenarios import TOTAL, WINDOW, run_scenario


def test_seed_scenario_completes_with_reused_blocks_and_triplicate_resumes(seed: ServerProcess) -> None:
    dup_before = seed.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"')
    applied_before = seed.metric("kvferry_resumes_total")

    payload, got, windows, dups, state, final = asyncio.run(
        run_scenario(seed, "seed-1", lambda st: st.sent_tokens, max_polls=5000))

    assert state == "TRANSFER_STATE_SUCCESS"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert len(windows) == 4
    # The allocator handed the next window the very blocks just freed: the old guard's trap.
    assert windows[0] == windows[1] == windows[2] and len(windows[0]) == 8
    assert windows[3] == windows[0][:1]  # 8 tokens left: one block, the first one freed
    # Exactly one resume applied per window boundary; the other ranks' copies were duplicates.
    assert final.resume_count == 3
    assert dups.count(False) == 3 and dups.count(True) == 6
    assert final.metadata == b"seed"
    assert seed.metric("kvferry_resumes_total") - applied_before == 3
    assert seed.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"') - dup_before == 6


def test_index_keyed_guard_hangs_where_the_sent_token_guard_completes(seed: ServerProcess) -> None:
    """Same server, same allocator, same sequence: only the guard's key differs."""
    _, _, windows, _, state, final = asyncio.run(
        run_scenario(seed, "old-guard", lambda st: tuple(st.block_indices), max_polls=300))
    assert state == "TRANSFER_STATE_TRANSFERRING", "the index-keyed guard should have stalled"
    # It resumed once, then saw the reused indices, took the full second window for "already
    # resumed" and waited forever, while the sender sat blocked on that full window.
    assert final.resume_count == 1
    assert final.sent_tokens == 2 * WINDOW and final.window_filled_tokens == WINDOW
    assert len(windows) == 1

    _, _, _, _, state, final = asyncio.run(
        run_scenario(seed, "new-guard", lambda st: st.sent_tokens, max_polls=5000))
    assert state == "TRANSFER_STATE_SUCCESS" and final.sent_tokens == TOTAL
