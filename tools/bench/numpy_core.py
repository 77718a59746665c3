"""numpy doing the jobs of bench_core on the same frame; prints `name median_us` lines.

Usage: numpy_core.py RGB_FILE WIDTH HEIGHT
"""
import sys
import timeit
import zlib

import numpy as np

path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rgb = np.fromfile(path, dtype=np.uint8).reshape(h, w, 3)
gray = np.ascontiguousarray(rgb[:, :, 2])
bits01 = (gray >= 170).astype(np.uint8)
packed = np.packbits(bits01, axis=1)
payload = packed.tobytes()


def median_us(stmt):
    t = timeit.Timer(stmt)
    n, _ = t.autorange()
    n = max(1, n // 10)  # ~20 ms per sample
    runs = sorted(t.repeat(repeat=15, number=n))
    return runs[len(runs) // 2] / n * 1e6


def recipe():
    # the original numpy recipe, as users run it
    img = rgb[:, :, [2]].copy()
    img[img < 170] = 0
    img[img != 0] = 1
    return np.packbits(img.reshape(-1, 1)).tobytes()


print("threshold_pack_gray8 %.2f" % median_us(lambda: np.packbits(gray >= 170, axis=1)))
print("threshold_pack_rgb8_blue %.2f" % median_us(lambda: np.packbits(rgb[:, :, 2] >= 170)))
print("original_recipe %.2f" % median_us(recipe))
print("pack_rows_01 %.2f" % median_us(lambda: np.packbits(bits01, axis=1)))
print("unpack_rows %.2f" % median_us(lambda: np.unpackbits(packed, axis=1, count=w)))
print("crc32 %.2f" % median_us(lambda: zlib.crc32(payload)))
print("numpy_version %s" % np.__version__)
