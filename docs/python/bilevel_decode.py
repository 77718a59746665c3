#!/usr/bin/env python3
"""A second decoder of the `bilevel` codec (codec id 1), written from
docs/CODEC.md section 1 alone: pure Python, standard library only.

It is slow (about a second for a 1024x768 frame) and meant as an
executable reading of the specification and as a cross-check of the Rust
decoder (`crates/codec`), not for production.

    rows = decode(payload, width, height)                  # key frame
    rows = decode(payload, width, height, prev_rows=rows0)  # delta frame
    packed = pack_rows(rows, width)   # the wire layout (numpy.packbits(mask, axis=1))

A row is a list of `width` ints, 0 or 1. A malformed payload raises
ValueError naming the problem. `decode` does not check the payload's
reference sequence number (see `payload_info`); the caller must pass the
frame it names.

Command line (writes the packed mask, stride * height bytes):

    python3 bilevel_decode.py PAYLOAD.blv WIDTH HEIGHT [--ref PREV.bits] [--out OUT.bits]

`--ref` is the packed previous frame (needed for a delta payload); without
`--out` the mask goes to stdout. Exit status 1 and a message on stderr when
the payload is malformed.
"""

import argparse
import sys

KIND_KEY = 0
KIND_DELTA = 1

M = 512  # sum of a model's frequencies (9-bit probabilities)
L = 1 << 15  # lower bound of a lane's state
STATE_MAX = 1 << 31  # states stay below this

# Models (1.2): alphabet sizes of models 0 to 7.
ALPHABETS = [4, 4, 4, 4, 50, 50, 17, 17]
M_RUN = 4  # + colour
M_MODE_S = 6
M_MODE_T = 7

SYM_PASS = 15
SYM_HORIZ = 16

MANY = 4096  # mode stream: 16 lanes from this many symbols on, else 4


# ---------------------------------------------------------------- 1.1 varints


def read_varint(data, pos, what):
    """Reads a LEB128 varint at `pos`: (value, new pos). At most 10 bytes,
    the tenth at most 0x01; non-minimal forms are accepted."""
    v = 0
    for i in range(10):
        if pos >= len(data):
            raise ValueError(f"truncated varint ({what})")
        b = data[pos]
        pos += 1
        part = b & 0x7F
        if i == 9 and part > 1:
            raise ValueError(f"varint over 64 bits ({what})")
        v |= part << (7 * i)
        if b & 0x80 == 0:
            return v, pos
    raise ValueError(f"varint longer than 10 bytes ({what})")


# ---------------------------------------------------------------- 1.2 models


class Model:
    """A frequency table: used symbols with frequency f[s] and cumulative c[s]."""

    def __init__(self, index):
        self.index = index
        self.by_slot = None  # slot -> (symbol, c, f); None: the model is empty

    def read(self, data, pos):
        alphabet = ALPHABETS[self.index]
        bitmap, pos = read_varint(data, pos, f"model {self.index} bitmap")
        if bitmap >> alphabet:
            raise ValueError(f"model {self.index} uses a symbol outside its alphabet")
        used = [s for s in range(alphabet) if bitmap >> s & 1]
        if not used:
            self.by_slot = None
            return pos
        freqs = []
        total = 0
        for _ in used[:-1]:
            f, pos = read_varint(data, pos, f"model {self.index} frequency")
            if f < 1 or total + f >= M:
                raise ValueError(f"model {self.index} frequency out of range")
            freqs.append(f)
            total += f
        freqs.append(M - total)
        self.by_slot = [None] * M
        c = 0
        for s, f in zip(used, freqs):
            for slot in range(c, c + f):
                self.by_slot[slot] = (s, c, f)
            c += f
        return pos


# ---------------------------------------------------------------- 1.3 rANS streams


class RansStream:
    """N lanes over one stream: 4N bytes of states (lane 0 first, u32 LE),
    then 16-bit LE words shared by the lanes in decoding order."""

    def __init__(self, stream, n_lanes, name):
        self.name = name
        if len(stream) < 4 * n_lanes:
            raise ValueError(f"{name} shorter than its {n_lanes} lane states")
        self.x = []
        for j in range(n_lanes):
            x = int.from_bytes(stream[4 * j : 4 * j + 4], "little")
            if not L <= x < STATE_MAX:
                raise ValueError(f"{name}: initial state of lane {j} out of range")
            self.x.append(x)
        self.stream = stream
        self.pos = 4 * n_lanes  # byte offset of the next word
        self.i = 0  # symbols decoded so far

    def decode(self, model):
        """Decodes symbol i of the stream with lane i mod N."""
        if model.by_slot is None:
            raise ValueError(f"{self.name}: symbol from empty model {model.index}")
        lane = self.i % len(self.x)
        self.i += 1
        x = self.x[lane]
        slot = x & (M - 1)
        s, c, f = model.by_slot[slot]
        x = f * (x >> 9) + slot - c
        if x < L:
            if self.pos + 2 > len(self.stream):
                raise ValueError(f"{self.name} read past its end")
            w = self.stream[self.pos] | self.stream[self.pos + 1] << 8
            self.pos += 2
            x = (x << 16) | w
        self.x[lane] = x
        return s

    def check_end(self):
        if self.pos != len(self.stream):
            raise ValueError(f"{self.name} does not end where it should (bytes left over)")
        if any(x != L for x in self.x):
            raise ValueError(f"{self.name} does not end where it should (final states)")


# ---------------------------------------------------------------- 1.4 extra bits


class ExtraBits:
    """Reads bits MSB-first; every byte must be read by the end, no bit past it."""

    def __init__(self, data):
        self.data = data
        self.bit = 0  # bits read so far

    def read(self, nbits):
        v = 0
        for _ in range(nbits):
            byte = self.bit >> 3
            if byte >= len(self.data):
                raise ValueError("extra-bit stream read past its end")
            v = (v << 1) | (self.data[byte] >> (7 - (self.bit & 7)) & 1)
            self.bit += 1
        return v

    def check_end(self):
        if (self.bit + 7) // 8 != len(self.data):
            raise ValueError("extra-bit stream does not end where it should")


# ---------------------------------------------------------------- transitions


def transitions(row):
    """The transition list of a pixel row (pixel -1 being 0)."""
    out = []
    prev = 0
    for x, p in enumerate(row):
        p = 1 if p else 0
        if p != prev:
            out.append(x)
            prev = p
    return out


def render(tr, width):
    """Pixels from entry 2k (inclusive) to entry 2k+1 (exclusive, or width) are 1."""
    row = [0] * width
    for j in range(0, len(tr), 2):
        end = tr[j + 1] if j + 1 < len(tr) else width
        for x in range(tr[j], end):
            row[x] = 1
    return row


def temporal_reference(prev_tr, y, dx, dy, width, height):
    """T(y) (1.5): the previous frame's row y - dy moved dx pixels right."""
    sy = y - dy
    if not 0 <= sy < height:
        return []
    p_list = prev_tr[sy]
    k = 0
    while k < len(p_list) and p_list[k] + dx <= 0:
        k += 1
    out = [0] if k % 2 == 1 else []
    for p in p_list[k:]:
        if p + dx >= width:
            break
        out.append(p + dx)
    return out


# ---------------------------------------------------------------- 1.6 a row against a reference


class Symbols:
    """One of the arrays syms_s / syms_t, taken in order across the frame."""

    def __init__(self, syms, name):
        self.syms = syms
        self.name = name
        self.next = 0

    def take(self):
        if self.next >= len(self.syms):
            raise ValueError(f"a row needs more mode symbols than {self.name} holds")
        s = self.syms[self.next]
        self.next += 1
        return s


def run(c, side, models, extra):
    """A run length of colour c: a class from model 4 + c, then its extra bits."""
    q = side.decode(models[M_RUN + c])
    if q < 16:
        return q
    j = q - 16
    b = j // 2 + 5
    e = extra.read(b - 2)
    return (1 << (b - 1)) + (j % 2) * (1 << (b - 2)) + e


def decode_row(ref, width, syms, side, models, extra):
    """Decodes one row's transition list C against the reference list `ref`."""

    def R(k):
        return ref[k] if k < len(ref) else width

    C = []
    a0 = -1
    k = 0
    while True:
        sym = syms.take()
        if sym <= 14:  # vertical, offset sym - 7
            a1 = R(k) + sym - 7
            if a1 <= a0 or a1 > width:
                raise ValueError("vertical mode out of order")
            if a1 == width:
                return C
            C.append(a1)
            a0 = a1
            if k > 0 and R(k - 1) > a1:
                k = k - 1
            else:
                k = k + 1
                while R(k) <= a1:
                    k = k + 2
        elif sym == SYM_PASS:
            if R(k + 1) >= width:
                raise ValueError("pass mode past the end of the row")
            a0 = max(a0, R(k + 1))
            k = k + 2
        elif sym == SYM_HORIZ:
            colour = len(C) % 2
            r1 = run(colour, side, models, extra)
            r2 = run(1 - colour, side, models, extra)
            if a0 >= 0 and r1 == 0:
                raise ValueError("zero first run in horizontal mode")
            a1 = max(a0, 0) + r1
            a2 = a1 + r2
            if a2 > width or (r2 == 0 and a1 < width):
                raise ValueError("horizontal mode runs past the end of the row")
            if a1 < width:
                C.append(a1)
            if a2 == width:
                return C
            C.append(a2)
            a0 = a2
            while R(k) <= a0 or k % 2 != len(C) % 2:
                k = k + 1
        else:  # cannot come from a valid model (alphabet 17)
            raise ValueError("mode symbol outside its alphabet")


# ---------------------------------------------------------------- the payload


def payload_info(payload):
    """(kind, ref_sequence, dx, dy) of a payload; ref_sequence etc. None for a key frame."""
    if len(payload) == 0:
        raise ValueError("empty payload")
    kind = payload[0]
    if kind == KIND_KEY:
        return kind, None, 0, 0
    if kind != KIND_DELTA:
        raise ValueError(f"unknown payload kind {kind}")
    if len(payload) < 11:
        raise ValueError("truncated delta header")
    seq = int.from_bytes(payload[1:9], "little")
    dx = int.from_bytes(payload[9:10], "little", signed=True)
    dy = int.from_bytes(payload[10:11], "little", signed=True)
    return kind, seq, dx, dy


def decode_transitions(payload, width, height, prev_tr=None):
    """Decodes a payload to the frame's transition lists (one per row)."""
    payload = bytes(payload)
    if width < 1 or height < 1:
        raise ValueError("width and height must be at least 1")
    kind, _seq, dx, dy = payload_info(payload)
    delta = kind == KIND_DELTA
    if delta and prev_tr is None:
        raise ValueError("delta payload without a reference frame")
    pos = 11 if delta else 1

    models = []
    for m in range(8):
        model = Model(m)
        pos = model.read(payload, pos)
        models.append(model)

    n_s, pos = read_varint(payload, pos, "n_s")
    n_t, pos = read_varint(payload, pos, "n_t")
    if n_s + n_t > height * (2 * width + 2):
        raise ValueError("more mode symbols than the frame can hold")
    if not delta and n_t != 0:
        raise ValueError("temporal mode symbols in a key frame")

    side_len, pos = read_varint(payload, pos, "side_len")
    if side_len > len(payload) - pos:
        raise ValueError("side stream length past the end of the payload")
    side_bytes = payload[pos : pos + side_len]
    pos += side_len
    mode_len, pos = read_varint(payload, pos, "mode_len")
    if mode_len > len(payload) - pos:
        raise ValueError("mode stream length past the end of the payload")
    mode_bytes = payload[pos : pos + mode_len]
    pos += mode_len
    extra = ExtraBits(payload[pos:])

    # 1.3: the whole mode stream first.
    if n_s + n_t == 0:
        if mode_len != 0:
            raise ValueError("mode stream without mode symbols")
        syms_s, syms_t = [], []
    else:
        n_lanes = 16 if n_s + n_t >= MANY else 4
        ms = RansStream(mode_bytes, n_lanes, "mode stream")
        syms_s = [ms.decode(models[M_MODE_S]) for _ in range(n_s)]
        syms_t = [ms.decode(models[M_MODE_T]) for _ in range(n_t)]
        ms.check_end()
    syms_s = Symbols(syms_s, "syms_s")
    syms_t = Symbols(syms_t, "syms_t")

    # 1.5: the rows.
    side = RansStream(side_bytes, 2, "side stream")
    rows = []
    prev_row_mode = 0
    for y in range(height):
        above = rows[y - 1] if y > 0 else []
        mode = side.decode(models[prev_row_mode])
        if mode == 0:
            tr = decode_row(above, width, syms_s, side, models, extra)
        elif mode == 1:
            if not delta:
                raise ValueError("temporal row in a key frame")
            ref = temporal_reference(prev_tr, y, dx, dy, width, height)
            tr = decode_row(ref, width, syms_t, side, models, extra)
        elif mode == 2:
            if not delta:
                raise ValueError("copied row in a key frame")
            tr = temporal_reference(prev_tr, y, dx, dy, width, height)
        else:
            tr = list(above)
        rows.append(tr)
        prev_row_mode = mode

    if syms_s.next != n_s or syms_t.next != n_t:
        raise ValueError("mode symbols left over after the last row")
    side.check_end()
    extra.check_end()
    return rows


def decode(payload, width, height, prev_rows=None):
    """Decodes a bilevel payload to `height` rows of `width` pixels (0/1).
    `prev_rows` (same form) is the reference frame of a delta payload.
    Dimensions are checked (1 to 2**20 each) and so is the payload's length
    (1 to stride * height bytes, CODEC.md section 0): a caller without the
    wire format's limits cannot be made to loop for ever."""
    if not (1 <= width <= 1 << 20 and 1 <= height <= 1 << 20):
        raise ValueError(f"dimensions {width}x{height} out of range (1..=1048576 each)")
    if not 1 <= len(payload) <= (width + 7) // 8 * height:
        raise ValueError(f"a {len(payload)}-byte payload for a {width}x{height} mask "
                         f"(1 to {(width + 7) // 8 * height} bytes)")
    prev_tr = None
    if prev_rows is not None:
        if len(prev_rows) != height or any(len(r) != width for r in prev_rows):
            raise ValueError("reference frame has other dimensions")
        prev_tr = [transitions(r) for r in prev_rows]
    return [render(tr, width) for tr in decode_transitions(payload, width, height, prev_tr)]


# ---------------------------------------------------------------- wire layout


def pack_rows(rows, width):
    """Rows of 0/1 pixels -> the wire layout: MSB-first, each row padded to
    ceil(width / 8) bytes with 0 bits."""
    out = bytearray()
    for row in rows:
        if len(row) != width:
            raise ValueError("row of the wrong width")
        for x0 in range(0, width, 8):
            b = 0
            for i, p in enumerate(row[x0 : x0 + 8]):
                if p:
                    b |= 0x80 >> i
            out.append(b)
    return bytes(out)


def unpack_rows(data, width, height):
    """The wire layout -> rows of 0/1 pixels (padding bits ignored)."""
    stride = (width + 7) // 8
    if len(data) != stride * height:
        raise ValueError(f"packed mask of {len(data)} B, expected {stride * height} B")
    return [
        [data[y * stride + (x >> 3)] >> (7 - (x & 7)) & 1 for x in range(width)]
        for y in range(height)
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Decode a bilevel (codec 1) payload to a packed mask.")
    ap.add_argument("payload", help="the payload file (.blv)")
    ap.add_argument("width", type=int)
    ap.add_argument("height", type=int)
    ap.add_argument("--ref", help="the packed previous frame (for a delta payload)")
    ap.add_argument("--out", help="where to write the packed mask (default: stdout)")
    a = ap.parse_args(argv)
    try:
        with open(a.payload, "rb") as f:
            payload = f.read()
        prev = None
        if a.ref is not None:
            with open(a.ref, "rb") as f:
                prev = unpack_rows(f.read(), a.width, a.height)
        rows = decode(payload, a.width, a.height, prev)
    except (OSError, ValueError) as e:
        print(f"bilevel_decode: {a.payload}: {e}", file=sys.stderr)
        return 1
    packed = pack_rows(rows, a.width)
    if a.out is None:
        sys.stdout.buffer.write(packed)
    else:
        with open(a.out, "wb") as f:
            f.write(packed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
