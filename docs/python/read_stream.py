#!/usr/bin/env python3
"""Read masks from bitmask-recv as numpy arrays, one frame at a time.

    bitmask-recv --listen 0.0.0.0:5000 --out - --format gray8 | python3 read_stream.py 640x480
    bitmask-recv --listen 0.0.0.0:5000 --out - | python3 read_stream.py 640x480 --raw
    bitmask-recv --listen 0.0.0.0:5000 --format gray8 --exec 'python3 read_stream.py 640x480'

gray8: one byte per pixel, 0 or 255. raw: bits packed MSB-first, each row
padded to whole bytes (numpy.packbits(mask, axis=1)). Every mask has the size
the sender was given. Prints one line per frame: its index and how many
pixels are set; put your own processing where the print is.
"""
import sys

import numpy as np

w, h = (int(v) for v in sys.argv[1].lower().split("x"))
raw = "--raw" in sys.argv[2:]
frame_bytes = (w + 7) // 8 * h if raw else w * h
stdin = sys.stdin.buffer
i = 0
while True:
    buf = stdin.read(frame_bytes)  # blocks until a whole frame arrived (or the stream ended)
    if len(buf) < frame_bytes:
        break
    if raw:
        mask = np.unpackbits(np.frombuffer(buf, np.uint8).reshape(h, -1), axis=1)[:, :w].astype(bool)
    else:
        mask = np.frombuffer(buf, np.uint8).reshape(h, w) > 0
    print(f"frame {i}: {int(mask.sum())} of {w * h} pixels set", flush=True)
    i += 1
