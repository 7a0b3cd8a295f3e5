"""The server's shared-memory pool file (transport "shm"; clients map it with
``kvferry.client.shm.ShmPool``).

Its name carries the server's pid, so a server that starts after one was SIGKILLed removes what
the dead one left (``sweep``). The server preallocates the whole file: a tmpfs that is too small
(Docker's default /dev/shm is 64 MiB) fails at start with a message, instead of a SIGBUS at the
first row written past its end.
"""

from __future__ import annotations

import os
import re
import secrets

from kvferry.client.shm import ShmPool, ShmUnavailable, file_size

PREFIX = "kvferry-pool-"


def create(directory: str, num_blocks: int, block_tokens: int, row_bytes: int) -> ShmPool:
    """The server's pool file, preallocated (so a full tmpfs fails here, with a message)."""
    size = file_size(num_blocks, block_tokens, row_bytes)
    path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ShmUnavailable(f"cannot create the pool in {directory}: {e.strerror}; give "
                             f"--shm-dir a writable memory-backed directory") from e
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            free = os.statvfs(directory)
            raise ShmUnavailable(
                f"the pool needs {size / 2**30:.2f} GiB of shared memory in {directory}, which has "
                f"{free.f_bavail * free.f_frsize / 2**30:.2f} GiB free ({e.strerror}): enlarge it "
                f"(docker --shm-size, a Memory emptyDir's sizeLimit) or shrink the pool "
                f"(--num-blocks, --block-tokens)") from e
        return ShmPool(path, num_blocks, block_tokens, row_bytes, fd=fd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def sweep(directory: str, prefix: str = PREFIX) -> list[str]:
    """Remove pool files (or other files named PREFIX<pid>-<hex>, the same-host calls' socket)
    whose server process is gone (one that was SIGKILLed); returns them."""
    pattern = re.compile(rf"^{prefix}(\d+)-[0-9a-f]+$")
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True
