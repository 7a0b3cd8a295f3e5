"""Helpers for tests, benchmarks and demos that need a real kvferry server next to them (your own
integration tests too): ``launch`` starts ``kvferry serve`` as a child process on free ports and
returns once it reports SERVING; ``fault_proxy.FaultProxy`` stands between a client and a server
and partitions, delays or resets the link on command."""

from kvferry.testing.server_process import ServerProcess, launch

__all__ = ["ServerProcess", "launch"]
