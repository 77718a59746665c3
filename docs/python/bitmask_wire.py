"""bitmask protocol v1 in Python + numpy: a reference decoder/encoder (spec: docs/PROTOCOL.md).

As a module:  name, rest = read_hello(f)          # f: a binary stream, e.g. sock.makefile("rb")
              (read_hello_flags(f) also gives the hello's flags; ack(n) answers HELLO_ACKS)
              frame = read_frame(f, rest)         # a Frame, or None at a clean end of stream
              mask = unpack(frame.payload, frame.width, frame.height)   # (h, w) uint8 0/1
              f.write(hello("cam") + encode_frame(pack(mask), w, h, sequence))
As a tool:    python3 bitmask_wire.py recv 127.0.0.1:5000 OUTDIR [--count N]   # frame-NNNNNN.npy
              python3 bitmask_wire.py send HOST:PORT [--channel blue --threshold 170] IMAGE...
Needs numpy; thresholding images (8-bit gray/RGB/RGBA) needs Pillow.
"""
import argparse, socket, struct, sys, time, unicodedata, zlib
from pathlib import Path
from typing import NamedTuple

try:
    import numpy as np
except ImportError:
    sys.exit("bitmask_wire: needs numpy (pip install numpy)")

MAGIC, HELLO_MAGIC, VERSION, CODEC_RAW, FLAG_DELTA = b"BMSK", b"BMHI", 1, 0, 0x01
ACK_MAGIC, HELLO_ACKS, HELLO_RESUME = b"BMAK", 0x01, 0x02
FIELDS = struct.Struct("<4sBBBBIIQQI")  # header bytes 0..36; the u32 CRC follows
HEADER_LEN, MAX_SIZE = 40, 4096  # default reader limit: 4096 x 4096
CHANNELS = {"red": 0, "green": 1, "blue": 2}


class WireError(ValueError):
    """The stream breaks protocol v1: close the connection."""


class Truncated(WireError):
    """The stream ended inside a hello, header or payload."""


class CrcMismatch(WireError):
    """Recoverable: the damaged frame was read whole and the next one may follow."""


class Frame(NamedTuple):
    flags: int
    codec: int
    width: int
    height: int
    sequence: int
    timestamp_us: int
    payload: bytes


def _read(f, n, part=None, got=0):
    """n bytes; fewer only at the end of the stream and when part is None (else Truncated)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    if part and len(buf) < n:
        raise Truncated(f"stream ended inside a {part}: got {got + len(buf)} of {got + n} bytes")
    return bytes(buf)


def read_hello(f):
    """Reads the optional hello: (sender name or None, bytes already read of the first frame)."""
    name, _flags, rest = read_hello_flags(f)
    return name, rest


def read_hello_flags(f):
    """As read_hello, with the hello's flags (0 without a hello): (name, flags, rest)."""
    head = _read(f, 4)
    if head != HELLO_MAGIC:
        return None, 0, head
    version, flags, n = struct.unpack("<BBH", _read(f, 4, "hello", 4))
    if version != VERSION:
        raise WireError(f"unsupported protocol version {version} in a hello")
    if not 1 <= n <= 255:
        raise WireError(f"bad hello: name length {n} is not 1..=255")
    try:
        name = _read(f, n, "hello", 8).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"bad hello: name is not UTF-8: {e}") from None
    return check_name(name), flags, b""


def ack(next_sequence):
    """An acknowledgement: every frame below `next_sequence` handled (sent to a sender whose
    hello has HELLO_ACKS; PROTOCOL.md section 6)."""
    return ACK_MAGIC + struct.pack("<B3xQ", VERSION, next_sequence)


def check_name(name):
    """`name` if it is a valid sender name (usable as a directory name), else WireError."""
    n = len(name.encode("utf-8"))
    if not 1 <= n <= 255:
        raise WireError(f"bad hello: name length {n} is not 1..=255")
    # Rust's char::is_control is Unicode category Cc
    if name in (".", "..") or any(c in "/\\" or unicodedata.category(c) == "Cc" for c in name):
        raise WireError(f"bad hello: name {name!r} is not usable as a directory name")
    return name


def read_frame(f, prefix=b"", max_w=MAX_SIZE, max_h=MAX_SIZE):
    """Reads one whole frame, checked field by field and by CRC; None at a clean end of stream."""
    head = prefix + _read(f, HEADER_LEN - len(prefix))
    if not head:
        return None
    if len(head) >= 4 and head[:4] != MAGIC:
        raise WireError(f"bad magic {head[:4].hex(' ')} (expected 42 4d 53 4b, b'BMSK')")
    if len(head) < HEADER_LEN:
        raise Truncated(f"stream ended inside a header: got {len(head)} of {HEADER_LEN} bytes")
    _, version, flags, codec, _, w, h, seq, ts, length = FIELDS.unpack(head[:36])
    if version != VERSION:
        raise WireError(f"unsupported protocol version {version} in a frame")
    if flags & ~FLAG_DELTA:
        raise WireError(f"unknown flag bits {flags:#04x}")
    if not (1 <= w <= max_w and 1 <= h <= max_h):
        raise WireError(f"invalid dimensions {w}x{h} (limit {max_w}x{max_h})")
    raw = (w + 7) // 8 * h
    if (length != raw) if codec == CODEC_RAW else not (1 <= length <= raw):
        rule = f"raw needs exactly {raw} B" if codec == CODEC_RAW else f"a compressed payload is 1..={raw} B"
        raise WireError(f"payload length {length} B does not fit a {w}x{h} frame with codec {codec}: {rule}")
    payload = _read(f, length, "payload")
    stored, computed = struct.unpack("<I", head[36:])[0], zlib.crc32(head[:36] + payload)
    if stored != computed:
        raise CrcMismatch(f"CRC mismatch on frame {seq}: header says {stored:#010x}, data gives {computed:#010x}")
    return Frame(flags, codec, w, h, seq, ts, payload)


def hello(name, flags=0):
    """The hello announcing sender `name` (1..=255 bytes of UTF-8, usable as a directory name)."""
    b = check_name(name).encode("utf-8")
    return HELLO_MAGIC + struct.pack("<BBH", VERSION, flags, len(b)) + b


def encode_frame(payload, width, height, sequence, timestamp_us=0, codec=CODEC_RAW, flags=0):
    """A whole frame: the 40-byte header (CRC included) followed by the payload bytes."""
    fields = FIELDS.pack(MAGIC, VERSION, flags, codec, 0, width, height, sequence, timestamp_us, len(payload))
    return fields + struct.pack("<I", zlib.crc32(fields + payload)) + payload


def pack(mask):
    """(h, w) mask (nonzero = 1) -> raw payload in the wire layout = np.packbits(mask, axis=1)."""
    return np.packbits(np.asarray(mask) != 0, axis=1).tobytes()


def unpack(payload, width, height):
    """Raw payload -> (h, w) uint8 array of 0/1 = np.unpackbits(..., axis=1, count=width)."""
    rows = np.frombuffer(payload, np.uint8).reshape(height, (width + 7) // 8)
    return np.unpackbits(rows, axis=1, count=width)


def threshold(path, channel="luma", threshold=128, invert=False):
    """An image file -> (h, w) uint8 0/1 mask, as bitmask-send: bit = value >= threshold
    (< with invert); value = one channel, or luma exactly as Pillow's convert('L')."""
    from PIL import Image

    with Image.open(path) as img:
        # (a 16-bit colour PNG opens as mode RGB, its samples cut to their
        # high byte: its decoder's raw mode says 16 bits)
        # (PNG's decoder takes the raw mode alone, TIFF's a tuple that
        # starts with it)
        raw = img.tile[0][3] if img.tile else None
        if isinstance(raw, tuple) and raw and isinstance(raw[0], str):
            raw = raw[0]
        wide = isinstance(raw, str) and ";16" in raw
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") or wide:
            # (Pillow's conversions clip or truncate these; bitmask-send
            # scales 16-bit values to 8)
            mode = raw if wide else img.mode
            raise ValueError(f"{path}: a {mode} image; this reference takes 8-bit images only")
        if channel == "luma":
            values = np.asarray(img.convert("L"))
        else:
            values = np.asarray(img.convert("RGB"))[:, :, CHANNELS[channel]]
    bits = values.astype(np.int16) >= threshold  # int16: threshold may be 256
    return (~bits if invert else bits).astype(np.uint8)


def _addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def send(to, images, channel="luma", thresh=128, invert=False, name="python"):
    """Thresholds `images` and sends them as frames 0, 1, ... over one TCP connection."""
    try:
        import PIL  # noqa: F401 (before connecting: a receiver is not left with a hello alone)
    except ImportError:
        sys.exit("bitmask_wire: sending needs Pillow (pip install pillow)")
    with socket.create_connection(_addr(to), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello(name))
        for seq, path in enumerate(images):
            mask = threshold(path, channel, thresh, invert)
            h, w = mask.shape
            sock.sendall(encode_frame(pack(mask), w, h, seq, time.time_ns() // 1000))
        sock.shutdown(socket.SHUT_WR)  # a clean end of stream for the receiver


def recv(listen, out, count=None):
    """Accepts senders one after another; writes each mask as out/frame-NNNNNN.npy (atomically).
    Acknowledges each frame written to a sender that asks (it keeps no record for resumed
    connections: a frame sent again is written again)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    srv = socket.create_server(_addr(listen))
    print("bitmask_wire: listening on %s:%d" % srv.getsockname()[:2], file=sys.stderr, flush=True)
    n = 0
    while count is None or n < count:
        conn, peer = srv.accept()
        # (a sender may be silent between frames as long as it likes, a
        # time-lapse; keepalive notices a host that went away)
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, v in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):  # (as bitmask-recv: a dead host within about 16 s)
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), v)
        name = f"{peer[0]}:{peer[1]}"
        with conn, conn.makefile("rb") as f:
            try:
                name, flags, rest = read_hello_flags(f)
                acks = bool(flags & HELLO_ACKS)
                if acks:
                    conn.sendall(ack(0))
                while count is None or n < count:
                    try:
                        frame, rest = read_frame(f, rest), b""
                    except CrcMismatch as e:
                        if acks:
                            # Not acknowledged: the connection is closed, so that the
                            # sender sends it again (PROTOCOL.md section 6, "handled").
                            print(f"bitmask_wire: {name}: damaged frame, connection closed "
                                  f"so that it is sent again: {e}", file=sys.stderr)
                            break
                        print(f"bitmask_wire: {name}: skipping frame: {e}", file=sys.stderr)
                        rest = b""
                        continue
                    if frame is None:
                        break
                    if frame.codec == CODEC_RAW and frame.flags & FLAG_DELTA:
                        print(f"bitmask_wire: {name}: skipping frame {frame.sequence}: a raw "
                              "frame with the delta flag (CODEC.md)", file=sys.stderr)
                        if acks:
                            conn.sendall(ack(frame.sequence + 1))  # handled: counted damaged
                        continue
                    if frame.codec != CODEC_RAW:
                        # Every later frame would be skipped too: say so once and stop.
                        sys.exit(f"bitmask_wire: {name}: frame {frame.sequence} uses codec {frame.codec}; this "
                                 "reference decodes raw frames only: start the sender with --codec raw")
                    final = out / f"frame-{frame.sequence:06d}.npy"
                    tmp = out / f".{final.name}.tmp"
                    with open(tmp, "wb") as t:
                        np.save(t, unpack(frame.payload, frame.width, frame.height))
                    tmp.replace(final)
                    n += 1
                    if acks:
                        conn.sendall(ack(frame.sequence + 1))
            except (WireError, OSError) as e:
                print(f"bitmask_wire: connection from {name}: {e}", file=sys.stderr)
    print(f"bitmask_wire: received {n} frames", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recv", help="receive frames, write frame-NNNNNN.npy")
    r.add_argument("listen", help="HOST:PORT (port 0 picks one; stderr says which)")
    r.add_argument("out", help="output directory")
    r.add_argument("--count", type=int, help="exit after N frames")
    s = sub.add_parser("send", help="threshold images and send them as frames 0, 1, ...")
    s.add_argument("to", help="receiver HOST:PORT")
    s.add_argument("images", nargs="+")
    s.add_argument("--channel", choices=["red", "green", "blue", "luma"], default="luma")
    s.add_argument("--threshold", type=int, default=128, choices=range(257), metavar="0..256")
    s.add_argument("--invert", action="store_true")
    s.add_argument("--name", default="python")
    a = p.parse_args(argv)
    try:
        if a.mode == "send":
            send(a.to, a.images, a.channel, a.threshold, a.invert, a.name)
            print(f"bitmask_wire: sent {len(a.images)} frames", file=sys.stderr)
        else:
            recv(a.listen, a.out, a.count)
    except (OSError, ValueError) as e:  # (WireError is a ValueError)
        print(f"bitmask_wire: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
