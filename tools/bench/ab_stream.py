"""A/B loopback streaming throughput of two builds of bitmask-send/bitmask-recv.

Usage: python3 tools/bench/ab_stream.py BIN_DIR_A BIN_DIR_B ROUNDS FRAMES IMAGE_DIR

Each round runs A and B (alternating which goes first): a receiver writing raw masks to
/dev/null (`--out - --count FRAMES`) and a `--no-drop --loop` sender (blue >= 170) on
loopback, once with `--codec raw` and once with `--codec auto`. Prints the medians of the
receiver's overall fps and of the wall time, and B/A ratios (same machine, same minutes).
Example (B = this checkout, A = an older commit built in a worktree):
  git worktree add /tmp/base REV && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base/target \
      cargo build --release -p bitmask-sender -p bitmask-receiver)
  cargo build --release -p bitmask-sender -p bitmask-receiver && cargo xtask demo
  python3 tools/bench/ab_stream.py /tmp/base/target/release target/release 5 4000 target/demo/in
"""
import subprocess, re, sys, time, statistics

a, b, rounds, frames, imgs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def run(bindir, codec):
    r = subprocess.Popen([f"{bindir}/bitmask-recv", "--listen", "127.0.0.1:0", "--out", "-", "--count", frames],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = r.stderr.readline()
    while "listening on" not in line:
        if not line:  # (the receiver ended before it listened)
            sys.exit(f"ab_stream: {bindir}/bitmask-recv ended: {r.wait()}")
        line = r.stderr.readline()
    addr = re.search(r"listening on (\S+)", line).group(1)
    t = time.monotonic()
    s = subprocess.run([f"{bindir}/bitmask-send", "--to", addr, "--codec", codec, "--no-drop", "--loop",
                        "--count", frames, "--channel", "blue", "--threshold", "170", imgs],
                       capture_output=True, text=True)
    err = r.communicate()[1]
    dt = time.monotonic() - t
    m = re.search(r"total: (\d+) frames .*?, ([\d.]+) fps", err)
    assert s.returncode == 0, s.stderr
    return float(m.group(2)), dt
for codec in ["raw", "auto"]:
    res = {a: [], b: []}
    for i in range(rounds):
        for bd in ([a, b] if i % 2 == 0 else [b, a]):
            res[bd].append(run(bd, codec))
    ma = statistics.median(x[0] for x in res[a]); mb = statistics.median(x[0] for x in res[b])
    wa = statistics.median(x[1] for x in res[a]); wb = statistics.median(x[1] for x in res[b])
    print(f"codec {codec}: receiver fps median A {ma:.0f}, B {mb:.0f} (B/A {mb/ma:.3f}); wall s A {wa:.2f}, B {wb:.2f} (B/A {wb/wa:.3f})")
