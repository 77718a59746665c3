// bitmask-recv live view: polls /stats.json, refreshes each sender's mask
// image only after the previous one has loaded (so a slow browser simply asks
// less often), and draws 60 s of fps and latency. No dependencies.
"use strict";

const cards = new Map(); // sender name -> {el, img, loading, want}
let period = 500;

function fmt(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  const el = document.getElementById("card").content.firstElementChild.cloneNode(true);
  el.dataset.name = name;
  const img = el.querySelector("img");
  c = { el, img, loading: false, want: null, wantSeq: null, shown: null };
  set(el, "shown", "–");
  // (the frame number shown is the image's, set when it has loaded: a
  // newer number over an older picture would present it as current)
  img.addEventListener("load", () => {
    c.loading = false; c.shown = c.pending; el.dataset.shown = c.shown;
    set(el, "shown", String(c.pendingSeq));
    refresh(c);
  });
  img.addEventListener("error", () => { c.loading = false; });
  document.getElementById("senders").appendChild(el);
  cards.set(name, c);
  return c;
}

function refresh(c) {
  if (c.loading || c.want === null || c.want === c.shown) return;
  c.loading = true;
  c.pending = c.want;
  c.pendingSeq = c.wantSeq;
  c.img.src = "/latest.png?sender=" + encodeURIComponent(c.el.dataset.name) + "&v=" + c.want;
}

function set(el, key, text) {
  const n = el.querySelector('[data-k="' + key + '"]');
  if (n.textContent !== text) n.textContent = text;
}

function plot(canvas, hist) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  g.clearRect(0, 0, w, h);
  const line = (vals, color) => {
    const nums = vals.filter((v) => v !== null);
    if (!nums.length) return 0;
    const max = Math.max(...nums) * 1.15 || 1;
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    let pen = false;
    vals.forEach((v, i) => {
      const x = w - pad - (vals.length - 1 - i) * (w - 2 * pad) / 59;
      if (v === null) { pen = false; return; }
      const y = h - pad - (v / max) * (h - 2 * pad);
      if (pen) g.lineTo(x, y); else g.moveTo(x, y);
      pen = true;
    });
    g.stroke();
    return max / 1.15;
  };
  const fmax = line(hist.fps, getComputedStyle(document.body).getPropertyValue("--fps"));
  const lmax = line(hist.latency_ms, getComputedStyle(document.body).getPropertyValue("--lat"));
  g.fillStyle = "#8b949e"; g.font = "10px sans-serif";
  g.fillText("max " + fmt(fmax, 1) + " fps", pad + 2, 12);
  g.fillText("max " + fmt(lmax, 2) + " ms", pad + 2, 24);
}

function render(s) {
  // (the numbers change every second whatever --http-fps: polled at
  // least that often; the images follow as they load)
  period = Math.min(1000, Math.max(100, 1000 / (s.http_fps || 2)));
  const up = s.senders.filter((x) => x.state !== "disconnected").length;
  document.getElementById("status").textContent =
    s.senders.length + " sender(s), " + up + " connected · up " + fmt(s.uptime_s, 0) + " s";
  const names = new Set(s.senders.map((x) => x.name));
  for (const [name, c] of cards) {
    if (!names.has(name)) { c.el.remove(); cards.delete(name); } // forgotten by the receiver
  }
  for (const x of s.senders) {
    const c = card(x.name);
    const el = c.el;
    set(el, "name", x.name);
    const st = el.querySelector('[data-k="state"]');
    st.textContent = x.state;
    st.className = "state " + x.state;
    set(el, "size", x.width ? x.width + "×" + x.height : "–");
    set(el, "frames", String(x.frames));
    set(el, "peer", x.transport + " " + x.peer + (x.connections > 1 ? " · " + x.connections + " connections" : ""));
    set(el, "fps", fmt(x.fps, 1));
    set(el, "mbps", fmt(x.mbps, 2));
    set(el, "avg_fps", fmt(x.avg_fps, 1));
    set(el, "avg_mbps", fmt(x.avg_mbps, 2));
    set(el, "ratio", fmt(x.ratio, 3));
    for (const k of ["latency_p50_ms", "latency_p99_ms", "total_latency_p50_ms", "total_latency_p99_ms"]) {
      set(el, k, fmt(x[k], 2));
    }
    if (x.clock_offset_s !== null && x.clock_offset_s !== undefined) {
      // the sender's clock is far from the receiver's: latency is not measured
      set(el, "latency_p50_ms", "not measured: clocks " + fmt(Math.abs(x.clock_offset_s), 1) + " s apart");
    }
    set(el, "lost", String(x.lost));
    set(el, "corrupt", String(x.corrupt));
    set(el, "incomplete", String(x.incomplete));
    set(el, "unwritten", String(x.unwritten));
    set(el, "partly_written", String(x.partly_written));
    set(el, "resent", String(x.resent));
    plot(el.querySelector("canvas"), x.history);
    c.want = x.shown_sequence === null ? null : x.image_version;
    c.wantSeq = x.shown_sequence;
    refresh(c);
  }
}

let unreachableSince = null;

async function poll() {
  // (a receiver gone off the network would hold the request for the
  // browser's connect timeout, minutes, the page unchanged meanwhile: the
  // numbers are greyed out after 3 s without an answer, and the request
  // given up after 20 s; a busy Pi Zero may answer in between)
  const ctl = new AbortController();
  const stale = () => {
    unreachableSince = unreachableSince || new Date();
    document.body.classList.add("stale"); // the numbers shown are old
  };
  const staleTimer = setTimeout(() => {
    stale();
    document.getElementById("status").textContent = "no answer from the receiver for 3 s…";
  }, 3000);
  const abortTimer = setTimeout(() => ctl.abort(), 20000);
  try {
    const r = await fetch("/stats.json", { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    unreachableSince = null;
    document.body.classList.remove("stale");
  } catch (e) {
    stale();
    const why = e.name === "AbortError" ? "no answer in 20 s" : e.message;
    document.getElementById("status").textContent =
      "receiver unreachable since " + unreachableSince.toLocaleTimeString() + " (" + why +
      "): the numbers below are from then; retrying…";
  } finally {
    clearTimeout(staleTimer);
    clearTimeout(abortTimer);
  }
  setTimeout(poll, period);
}

poll();
