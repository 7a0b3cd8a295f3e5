"""Render the lifecycle table as Mermaid and Markdown: the docs never restate it by hand."""

from __future__ import annotations

from kvferry.statemachine.lifecycle import TERMINAL, TRANSITIONS, State


def mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.BOOTSTRAPPING.name}: Open"]
    for rule in TRANSITIONS:
        guard = f" [{', '.join(g.__name__ for g in rule.guards)}]" if rule.guards else ""
        for source in rule.sources:
            lines.append(f"    {source.name} --> {rule.dest.name}: {rule.event}{guard}")
    for s in sorted(TERMINAL, key=lambda s: s.value):
        lines.append(f"    {s.name} --> [*]: Release")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    rows = ["| event | from | to | guard |", "|---|---|---|---|"]
    for rule in TRANSITIONS:
        sources = ", ".join(s.name for s in rule.sources)
        guards = ", ".join(f"`{g.__name__}`" for g in rule.guards) or "-"
        rows.append(f"| `{rule.event}` | {sources} | {rule.dest.name} | {guards} |")
    return "\n".join(rows) + "\n"


def state_machine_doc() -> str:
    """The whole of docs/state-machine.md."""
    from kvferry.statemachine import lifecycle

    paragraphs = (lifecycle.__doc__ or "").strip().split("\n\n")
    rules = "\n\n".join(paragraphs[1:3])  # "The rules ...:" and the numbered list
    return (
        "# The transfer state machine\n\n"
        "<!-- Generated from kvferry.statemachine.lifecycle.TRANSITIONS by `kvferry diagram "
        "--doc`; do not edit. -->\n\n"
        f"```mermaid\n{mermaid()}```\n\n"
        f"{markdown_table()}\n"
        f"{rules}\n"
    )
