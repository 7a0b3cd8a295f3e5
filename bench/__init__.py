"""kvferry's benchmark harness: each figure runs beside its baseline, alternating, several rounds.
Run ``python -m bench`` (``--smoke`` for a seconds-long check that it still works)."""
