"""Mode-symbol statistics of the bilevel codec's spatial coding (CODEC.md 1.6/1.7),
for two decoder ideas: V0 runs folded into the next symbol, and rendering a row as
the row above XOR the symmetric difference of the two transition lists.
Usage: python3 mode_stats.py MASK.bits... (packed 1024x768, as in target/codec-corpus)."""
import collections, math, sys
import numpy as np

W, H, K = 1024, 768, 8

def transitions(row):
    px = np.unpackbits(row)[:W].astype(np.int8)
    return [int(x) for x in np.nonzero(np.diff(np.concatenate([[0], px])))[0]]

def code_row(R, C):
    """The encoder's mode decisions (CODEC.md 1.7) for row C against reference R."""
    at = lambda k: R[k] if k < len(R) else W
    out, a0, k, i, n = [], -1, 0, 0, 0
    while True:
        a1 = C[i] if i < len(C) else W
        if at(k + 1) < a1:
            out.append("P"); a0 = max(a0, at(k + 1)); k += 2; continue
        if abs(a1 - at(k)) <= 7:
            out.append(a1 - at(k))
            if a1 == W: return out
            a0 = a1; i += 1; n += 1
            if k > 0 and at(k - 1) > a1: k -= 1
            else:
                k += 1
                while at(k) <= a1: k += 2
            continue
        a2 = C[i + 1] if i + 1 < len(C) else W
        out.append("H")
        if a1 < W: i += 1; n += 1
        if a2 == W: return out
        i += 1; n += 1; a0 = a2
        while at(k) <= a0 or k % 2 != n % 2: k += 1

def bits(counter):
    t = sum(counter.values())
    return -sum(c * math.log2(c / t) for c in counter.values())

def stats(path):
    a = np.fromfile(path, dtype=np.uint8).reshape(H, W // 8)
    sep, joint = collections.Counter(), collections.Counter()
    prev, ntr, nsym, nev, ndiff = [], 0, 0, 0, 0
    for y in range(H):
        C = transitions(a[y]); ntr += len(C)
        if y > 0 and C == prev: continue          # row mode 3: a copy
        ndiff += len(set(C) ^ set(prev))
        syms = code_row(prev, C); prev = C
        nsym += len(syms); sep.update(syms)
        j = len(syms)                              # trailing V0s (and the final V0 on width): one END
        while j and syms[j - 1] == 0: j -= 1
        run = 0
        for s in syms[:j]:
            if s == 0:
                run += 1
                if run == K: joint["ESC"] += 1; run = 0
                continue
            joint[(run, s)] += 1; run = 0
        joint["END"] += 1
    nev = sum(joint.values())
    return dict(transitions=ntr, symbols=nsym, v0=sep[0] / nsym, events=nev,
                sep_bytes=bits(sep) / 8, joint_bytes=bits(joint) / 8, diff_toggles=ndiff)

if __name__ == "__main__":
    rows = [stats(p) for p in sys.argv[1:]]
    keys = rows[0].keys()
    for p, r in zip(sys.argv[1:], rows):
        print(p.split("/")[-1], " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    med = {k: float(np.median([r[k] for r in rows])) for k in keys}
    print("median", " ".join(f"{k}={v:.3f}" for k, v in med.items()))
