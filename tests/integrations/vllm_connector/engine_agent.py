"""One vLLM engine in its own process, driven over stdin/stdout with JSON lines.

    python engine_agent.py MODEL_DIR '{"ec_transfer_config": {...}}'

prints {"event": "ready", "startup_s": ...} once the engine is up, then for each line
{"generate": [seed, ...], "max_tokens": N} on stdin prints {"tokens": [[...], ...],
"seconds": ...}; it exits at end of input. Images are drawn from their seeds, so every engine
sees the same pixels for a seed.
"""

from __future__ import annotations

import json
import os
import sys
import time

PROMPT = "Question: what is in the picture ? Answer:"


def image(seed: int):  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    t0 = time.monotonic()
    from vllm import LLM, SamplingParams

    model, extra = sys.argv[1], json.loads(sys.argv[2])
    args = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256, "max_num_seqs": 4,
            "limit_mm_per_prompt": {"image": 1}, "seed": 0, **extra}
    llm = LLM(model=model, **args)
    print(json.dumps({"event": "ready", "startup_s": time.monotonic() - t0}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        prompts = [{"prompt": PROMPT, "multi_modal_data": {"image": image(s)}}
                   for s in cmd["generate"]]
        t = time.monotonic()
        tokens = []
        for p in prompts:  # one at a time: a repeated image finds the first one's embedding
            out = llm.generate(p, SamplingParams(max_tokens=cmd["max_tokens"], temperature=0),
                               use_tqdm=False)
            tokens.append(list(out[0].outputs[0].token_ids))
        print(json.dumps({"tokens": tokens, "seconds": time.monotonic() - t}), flush=True)


if __name__ == "__main__":
    main()
