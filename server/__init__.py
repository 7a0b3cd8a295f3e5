"""kvferry's I/O shell: gRPC servicer, torch block pool, metrics, configuration, CLI."""
