import os
import threading

import numpy as np

from kvferry.client import Client
from kvferry.client.secrets import new_secret

target = os.environ.get("KVFERRY_TARGET", "localhost:50051")
tokens, hidden = 10_000, 4096  # fp16 rows of 8 KiB: the default server's row_bytes
embeddings = np.random.default_rng(0).standard_normal((tokens, hidden)).astype(np.float16)

secret = new_secret()  # the router makes one per request and hands it to both sides

with Client(target) as encoder, Client(target) as language:
    # Encoder side: push every row; the call blocks while the receiver's window is full.
    sender = threading.Thread(target=encoder.send, args=("req-42", embeddings),
                              kwargs={"secret": secret})
    sender.start()
    # Language side: one window at a time. Resume (keyed on sent_tokens) and Release are done for you.
    windows = []
    for window in language.receive("req-42", window_tokens=4096, secret=secret):
        print(f"window: tokens {window.start_token}..{window.start_token + window.num_tokens}")
        windows.append(window.rows())
    sender.join()

received = np.concatenate(windows).view(np.float16).reshape(tokens, hidden)
assert np.array_equal(received, embeddings)
print(f"ok: {len(windows)} windows, {received.nbytes / 2**20:.0f} MiB, bytes equal")
