#!/usr/bin/env python3
"""Builds the mask corpus for `cargo xtask bench codecs` (and the corpus round-trip test).

Sources are the sample images that scikit-image ships inside its wheel (read
straight from the package's data folder: no download). Every mask is
1024x768 unless noted, in the bitmask wire layout (MSB-first bits, rows
padded to whole bytes), written as `<name>.bits` next to a manifest
`corpus.tsv` with the columns: file, width, height, group, frame.

groups:
  otsu      each photo, luma resized to 1024x768, thresholded at Otsu
  blue170   each colour photo, resized, blue >= 170
  pan       a slow camera pan over a photo (2 px/frame right, 1 px/frame down), Otsu
  object    a silhouette (skimage's horse) moving 3 px/frame over a thresholded photo
  noisy     a static photo with fresh Gaussian sensor noise (sigma 6) each frame, Otsu

usage: make_corpus.py OUT_DIR [--small]   (--small: 256x192 and 4 frames, for committed vectors)
"""
import glob
import os
import sys

try:
    import numpy as np
    from PIL import Image
    import skimage
    from skimage.filters import threshold_otsu
except ImportError as e:
    sys.exit(f"make_corpus.py: {e}: needs numpy, Pillow and scikit-image "
             "(cargo xtask ci puts them in target/venv; run it with target/venv/bin/python3)")

W, H, FRAMES = 1024, 768, 24


def load_all():
    """(name, RGB-or-gray uint8 array) for every 2-D image in skimage's data folder."""
    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*"))):
        if not path.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
            continue
        try:
            im = Image.open(path)
            im.load()
        except Exception:
            continue
        if im.width < 64 or im.height < 64:
            continue
        if getattr(im, "n_frames", 1) > 1:
            continue
        im = im.convert("RGB") if im.mode not in ("L", "I;16", "I", "F", "1") else im.convert("L")
        out.append((os.path.splitext(os.path.basename(path))[0], im))
    return out


def luma(im):
    return np.asarray(im.convert("L"), dtype=np.uint8)


def otsu_mask(gray):
    g = np.asarray(gray)
    if g.min() == g.max():
        return g > 0
    return g >= threshold_otsu(g)


def write(out_dir, manifest, name, mask, group, frame):
    h, w = mask.shape
    packed = np.packbits(mask.astype(np.uint8), axis=1, bitorder="big")
    fn = f"{name}.bits"
    packed.tofile(os.path.join(out_dir, fn))
    manifest.append(f"{fn}\t{w}\t{h}\t{group}\t{frame}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    small = "--small" in sys.argv[2:]
    w, h, frames = (256, 192, 4) if small else (W, H, FRAMES)
    os.makedirs(out_dir, exist_ok=True)
    manifest = []
    images = load_all()
    if not images:
        sys.exit("no sample images found in scikit-image's data folder")
    keep = {"astronaut", "camera", "coffee", "horse", "page"} if small else None
    for name, im in images:
        if keep is not None and name not in keep:
            continue
        r = im.resize((w, h), Image.BILINEAR)
        write(out_dir, manifest, f"otsu_{name}", otsu_mask(luma(r)), "otsu", 0)
        if r.mode == "RGB" and not small:
            b = np.asarray(r, dtype=np.uint8)[:, :, 2]
            m = b >= 170
            if 0 < m.sum() < m.size:
                write(out_dir, manifest, f"blue170_{name}", m, "blue170", 0)

    by_name = dict(images)
    rng = np.random.default_rng(12345)

    # Slow pan: crop a moving window out of a photo scaled up by 1.25.
    src = by_name.get("coffee") or images[0][1]
    big = luma(src.resize((int(w * 1.25), int(h * 1.25)), Image.BILINEAR))
    t = threshold_otsu(big)
    for k in range(frames):
        x, y = 2 * k, k
        write(out_dir, manifest, f"pan_{k:02}", big[y:y + h, x:x + w] >= t, "pan", k)

    # A silhouette moving over a static thresholded background.
    bg_src = by_name.get("camera") or images[0][1]
    bg = otsu_mask(luma(bg_src.resize((w, h), Image.BILINEAR)))
    horse = by_name.get("horse")
    sil = (luma(horse.resize((w // 3, h // 3), Image.BILINEAR)) < 128) if horse else np.ones((h // 3, w // 3), bool)
    for k in range(frames):
        m = bg.copy()
        x0, y0 = w // 10 + 3 * k, h // 3
        sh, sw = sil.shape
        m[y0:y0 + sh, x0:x0 + sw] ^= sil
        write(out_dir, manifest, f"object_{k:02}", m, "object", k)

    # Static scene, fresh sensor noise every frame.
    noisy_src = by_name.get("astronaut") or images[0][1]
    g = luma(noisy_src.resize((w, h), Image.BILINEAR)).astype(np.float32)
    t = threshold_otsu(g.astype(np.uint8))
    for k in range(frames):
        n = np.clip(g + rng.normal(0, 6, g.shape), 0, 255).astype(np.uint8)
        write(out_dir, manifest, f"noisy_{k:02}", n >= t, "noisy", k)

    with open(os.path.join(out_dir, "corpus.tsv"), "w") as f:
        f.write("file\twidth\theight\tgroup\tframe\n")
        f.write("\n".join(manifest) + "\n")
    print(f"{len(manifest)} masks in {out_dir}")


if __name__ == "__main__":
    main()
