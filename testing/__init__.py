"""Helpers for tests, benchmarks and demos that need a real kvferry server next to them (your own
integration tests too): ``launch`` starts ``kvferry serve`` as a child process on free ports and
returns once it reports SERVING."""

from kvferry.testing.server_process import ServerProcess, launch

__all__ = ["ServerProcess", "launch"]
