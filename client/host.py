"""Which host this process runs on, as same-host transports (CUDA IPC, shared memory) compare it."""

from __future__ import annotations

import os


def host_id() -> str:
    """This host's kernel boot id: equal for processes that can share CUDA IPC handles and
    shared memory. Falls back to the host name where the kernel gives no boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return os.uname().nodename
