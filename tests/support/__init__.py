"""Test helpers shared by every part of the suite: real server processes (kvserver), scenarios,
certificates, budgets, and the agents that tests run as separate processes."""
