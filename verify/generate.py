"""Generate ``verify/lifecycle.pml``, the model's transition rules, from the core's table.

``kvferry.statemachine.lifecycle.TRANSITIONS`` is the single source of truth: the Promela model
(``verify/resume.pml``) moves a transfer's state only through the ``FIRE_<event>`` macros written
here, so the model checks the same table the server runs. A test fails when the committed file
and the table differ (either side changed alone). Guards are Python functions: each one needs its
Promela reading below, and a guard without one stops the generation (the model must learn it).

    python -m verify.generate > verify/lifecycle.pml
"""

from __future__ import annotations

import sys

from kvferry.statemachine.lifecycle import TERMINAL, TRANSITIONS, State

# Each guard of the table, read over the model's variables for transfer slot ``i`` (the model's
# ``sent``, ``total``, ``wstart`` and ``wtok`` are the core's fields of the same meaning; ``s`` is
# the sent_tokens a resume names).
GUARDS = {
    "resume_is_due": "(s == sent[i] && sent[i] - wstart[i] == wtok[i] && sent[i] < total[i])",
    # ``resd[i]``: the readers (ranks, one bit each) that resumed the current window.
    "every_reader_resumed": "(resd[i] == ALL_READERS)",
    "all_tokens_sent": "(sent[i] == total[i])",
}


def promela() -> str:
    out = ["/* Generated from kvferry.statemachine.lifecycle.TRANSITIONS by verify/generate.py:",
           " * do not edit; run `python -m verify.generate > verify/lifecycle.pml`. */", ""]
    out += [f"#define {s.name} {s.value}" for s in State]
    out.append("#define TERMINAL(x) (" + " || ".join(f"x == {s.name}" for s in sorted(
        TERMINAL, key=lambda s: s.value)) + ")")
    out.append("#define LIVE(x) (x != 0 && !TERMINAL(x))")
    out.append("")
    for rule in TRANSITIONS:
        missing = [g.__name__ for g in rule.guards if g.__name__ not in GUARDS]
        if missing:
            raise SystemExit(f"verify/generate.py: guard(s) {missing} of '{rule.event}' have no "
                             f"Promela reading in GUARDS: add one, and model what they need")
        source = " || ".join(f"st[i] == {s.name}" for s in rule.sources)
        guards = "".join(f" && {GUARDS[g.__name__]}" for g in rule.guards)
        out.append(f"/* {rule.event}: {', '.join(s.name for s in rule.sources)} -> {rule.dest.name} */")
        out.append(f"#define CAN_{rule.event}(i, s) (({source}){guards})")
        # Each guard alone too, for a model that must tell which one refused.
        for g in rule.guards:
            out.append(f"#define G_{g.__name__}(i, s) {GUARDS[g.__name__]}")
        # Fired only where CAN_ holds: the assertion makes any other use a verification error.
        out.append(f"#define FIRE_{rule.event}(i, s) assert(CAN_{rule.event}(i, s)); "
                   f"st[i] = {rule.dest.name}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(promela())
