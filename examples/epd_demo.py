"""Encode -> language over kvferry: one encoder process sends a request's embeddings (with token
ids and M-RoPE positions) that is larger than the receiver's window; a language worker of several
tensor-parallel ranks (one process each) receives it window by window: the transfer is opened
for that many readers, every rank reads every window and resumes it naming itself, and the window
moves on once all have. Progress bars per side; at the end, the verification.

    .venv/bin/python examples/epd_demo.py                 # starts its own CPU server
    .venv/bin/python examples/epd_demo.py --target host:port --hidden 2048   # uses yours

Runs on CPU in well under 30 seconds with the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvferry.client import Client
from kvferry.client.epd import EpdLayout, EpdReceiver, EpdSender, EpdTensors


def make_request(tokens: int, hidden: int, seed: int) -> EpdTensors:
    g = torch.Generator().manual_seed(seed)
    return EpdTensors(torch.randn(tokens, hidden, generator=g).to(torch.bfloat16),
                      torch.randint(0, 150_000, (tokens,), generator=g, dtype=torch.int32),
                      torch.randint(0, 4096, (3, tokens), generator=g, dtype=torch.int32))


def digest(t: EpdTensors) -> str:
    h = hashlib.sha256()
    for part in (t.embeddings.view(torch.uint8), t.token_ids, t.mrope_positions):
        h.update(part.contiguous().numpy().tobytes())
    return h.hexdigest()


def encoder(target: str, request_id: str, tokens: int, hidden: int, events: Any) -> None:
    request = make_request(tokens, hidden, seed=42)
    with Client(target) as client:
        events.put(("encoder", "start", tokens, digest(request)))
        status = EpdSender(client, EpdLayout(hidden)).send(
            request_id, request.embeddings, request.token_ids, request.mrope_positions,
            mrope_position_delta=-7)
        events.put(("encoder", "done", status.sent_tokens, ""))


def language_rank(target: str, request_id: str, hidden: int, window: int, rank: int, ranks: int,
                  events: Any) -> None:
    parts: list[EpdTensors] = []
    with Client(target) as client:
        receiver = EpdReceiver(client, EpdLayout(hidden))
        # Rank 0 opens it for every rank; the others follow. No barrier: a window moves on only
        # once every rank resumed it, and the blocks go once every rank released.
        for w in receiver.windows(request_id, window, open=rank == 0, readers=ranks, reader=rank):
            parts.append(w.tensors)
            events.put((f"rank {rank}", "window", w.tensors.embeddings.shape[0], ""))
    got = EpdTensors(torch.cat([p.embeddings for p in parts]), torch.cat([p.token_ids for p in parts]),
                     torch.cat([p.mrope_positions for p in parts], dim=1))
    events.put((f"rank {rank}", "done", len(parts), digest(got)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="", help="a running server (its --row-bytes must be "
                    "hidden x 2 + 16); default: start one")
    ap.add_argument("--tokens", type=int, default=20_000, help="request length (default 20000)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size, bf16 (default 1024)")
    ap.add_argument("--window", type=int, default=4096, help="receiver window in tokens")
    ap.add_argument("--ranks", type=int, default=2, help="tensor-parallel receiver ranks")
    args = ap.parse_args(argv)
    console = Console()
    layout = EpdLayout(args.hidden)
    server = None
    if not args.target:
        from kvferry.testing import launch

        server = launch({"row_bytes": layout.row_bytes, "block_tokens": 256,
                         "num_blocks": 2 * -(-args.window // 256), "default_window_tokens": args.window})
        args.target = server.target
        console.print(f"started a CPU server at {args.target} (row_bytes {layout.row_bytes})")
    try:
        with Client(args.target) as c:
            before = c.stats()
        request_id = f"epd-demo-{time.time_ns()}"
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        procs = [ctx.Process(target=language_rank, args=(args.target, request_id, args.hidden,
                                                         args.window, r, args.ranks, events))
                 for r in range(args.ranks)]
        procs.append(ctx.Process(target=encoder, args=(args.target, request_id, args.tokens,
                                                        args.hidden, events)))
        console.print(f"starting workers… ({args.ranks} language ranks and an encoder, each "
                      f"importing torch)")
        t0 = time.perf_counter()
        t_start = t0  # the encoder's first row: the transfer's own clock starts there
        for p in procs:
            p.start()
        digests: dict[str, str] = {}
        with Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("tokens"), TimeElapsedColumn(), console=console) as progress:
            bars = {"encoder": progress.add_task("encoder", total=args.tokens)}
            for r in range(args.ranks):
                bars[f"rank {r}"] = progress.add_task(f"rank {r}", total=args.tokens)
            with Client(args.target) as watcher:
                while len(digests) < args.ranks + 1:
                    while not events.empty():
                        who, what, n, dig = events.get()
                        if what == "window":
                            progress.advance(bars[who], n)
                        elif what == "start":
                            digests["sent"] = dig
                            t_start = time.perf_counter()
                        elif what == "done" and who != "encoder":
                            digests[who] = dig
                    try:  # the encoder's bar follows the server's count of delivered tokens
                        st = watcher.poll(request_id)
                        progress.update(bars["encoder"], completed=st.sent_tokens)
                    except Exception:
                        pass
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise SystemExit("a demo process failed")
                    time.sleep(0.05)
                t_end = time.perf_counter()
                progress.update(bars["encoder"], completed=args.tokens)
        for p in procs:
            p.join(30)
        elapsed = t_end - t_start
        with Client(args.target) as c:
            after = c.stats()
        applied = after.resumes_applied - before.resumes_applied
        dups = after.resume_duplicates - before.resume_duplicates
        windows = -(-args.tokens // args.window)
        sent = digests.pop("sent")
        ok = all(d == sent for d in digests.values())
        mib = args.tokens * layout.row_bytes / 2**20
        console.print(f"workers started in {t_start - t0:.1f}s (process start and imports, not "
                      f"the transfer)")
        console.print(f"request {args.tokens:,} tokens x {args.hidden} bf16 (+ids, M-RoPE) = "
                      f"{mib:.1f} MiB through {windows} windows of {args.window} tokens, "
                      f"{args.ranks} TP ranks: {elapsed:.2f}s, {mib / max(elapsed, 1e-9):,.0f} MiB/s "
                      f"(the 0.05 s polling of this display included)")
        for who, d in digests.items():
            console.print(f"  {who}: sha256 {d[:16]}… {'equal' if d == sent else 'DIFFERENT'} "
                          f"(sent {sent[:16]}…)")
        console.print(f"  resumes applied: {applied} (one per window boundary, once all "
                      f"{args.ranks} ranks resumed it: {windows - 1}); duplicates: {dups} (none: "
                      f"each rank resumed each window once)")
        ok = ok and applied == windows - 1 and dups == 0
        console.print("[bold green]verified[/]" if ok else "[bold red]verification FAILED[/]")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
