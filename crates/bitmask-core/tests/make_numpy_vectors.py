"""Regenerates numpy_vectors.txt: small gray images, thresholded and packed by numpy itself.

Run: target/venv/bin/python crates/bitmask-core/tests/make_numpy_vectors.py > crates/bitmask-core/tests/numpy_vectors.txt
Each line: width height threshold gray_hex packbits(axis=1)_hex packbits(ravel)_hex
"""
import numpy as np

rng = np.random.default_rng(20261125)
print("# made by make_numpy_vectors.py with numpy", np.__version__)
for (w, h, t) in [(1, 1, 128), (7, 3, 170), (9, 2, 1), (8, 4, 255), (13, 5, 128), (17, 3, 0 + 64), (31, 2, 200), (64, 2, 128), (67, 3, 99), (100, 1, 128)]:
    gray = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    mask = gray >= t
    rows = np.packbits(mask, axis=1)
    flat = np.packbits(mask.ravel())
    print(w, h, t, gray.tobytes().hex(), rows.tobytes().hex(), flat.tobytes().hex())
