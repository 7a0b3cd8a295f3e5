"""Which host this process runs on, as same-host transports (CUDA IPC, shared memory) compare it."""

from __future__ import annotations

import os


def host_id() -> str:
    """Equal for processes that can share CUDA IPC handles and shared memory: the kernel's boot
    id, and the network and IPC namespaces (two containers or pods on one machine are different
    hosts to kvferry unless they share those, as a pod's sidecars do). Falls back to the host name
    where the kernel gives no boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return os.uname().nodename
    spaces = []
    for ns in ("net", "ipc"):
        try:
            spaces.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            pass
    return "/".join([boot, *spaces])
