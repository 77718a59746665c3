#!/usr/bin/env python3
"""Read masks from bitmask-recv as numpy arrays, one frame at a time.

    bitmask-recv --listen 0.0.0.0:5000 --out - --format gray8 | python3 read_stream.py 640x480
    bitmask-recv --listen 0.0.0.0:5000 --out - | python3 read_stream.py 640x480 --raw
    bitmask-recv --listen 0.0.0.0:5000 --format gray8 --exec 'python3 read_stream.py 640x480'

gray8: one byte per pixel, 0 or 255. raw: bits packed MSB-first, each row
padded to whole bytes (numpy.packbits(mask, axis=1)). Every mask has the size
the sender was given. Prints one line per frame: its index, how many pixels
are set and the CRC-32 of the mask packed as raw; put your own processing
where the print is.
"""
import re
import sys
import zlib

import numpy as np

if len(sys.argv) < 2 or not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", sys.argv[1].lower()) \
        or set(sys.argv[2:]) - {"--raw"}:
    sys.exit("usage: read_stream.py WIDTHxHEIGHT [--raw]   (the size the sender was given)")
w, h = (int(v) for v in sys.argv[1].lower().split("x"))
raw = "--raw" in sys.argv[2:]
frame_bytes = (w + 7) // 8 * h if raw else w * h
stdin = sys.stdin.buffer
i = 0
while True:
    buf = stdin.read(frame_bytes)  # blocks until a whole frame arrived (or the stream ended)
    if len(buf) < frame_bytes:
        if buf:
            sys.exit(f"read_stream: the stream ended inside frame {i} ({len(buf)} of "
                     f"{frame_bytes} bytes): is {w}x{h} the sender's size?")
        break
    if raw:
        mask = np.unpackbits(np.frombuffer(buf, np.uint8).reshape(h, -1), axis=1)[:, :w].astype(bool)
    else:
        mask = np.frombuffer(buf, np.uint8).reshape(h, w) > 0
    crc = zlib.crc32(np.packbits(mask, axis=1).tobytes())
    print(f"frame {i}: {int(mask.sum())} of {w * h} pixels set (crc32 {crc:08x})", flush=True)
    i += 1
