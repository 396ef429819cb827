'use strict';
// Load generator for bench/run.py: one Node process holds every client connection.
//
// Usage: node loadgen.js '<json config>'   (ws is resolved through NODE_PATH)
//
// Config:
//   url, clients, mode: "broadcast" | "echo", parser: "raw" | "ws",
//   urls (optional, instead of url: client i connects to urls[i % urls.length],
//   so the clients are split evenly across several servers),
//   connectConcurrency, connectTimeoutMs, maxSeconds, drainMs, idleDrainMs,
//   measureFrom (broadcast: lines with seq >= measureFrom are measured), echoSize,
//   latencyEvery (broadcast: time every line, or one in this many)
//
// Every connection is opened by the `ws` client (HTTP upgrade, handshake checks).
// What happens after the handshake depends on `parser`:
//   "ws"   messages go through ws's Receiver and Sender, one 'message' event each.
//          Simple, but it tops out around 1 M messages/s on one core.
//   "raw"  (default) the socket's 'data' listener is swapped for a minimal frame
//          parser that reads each frame's header and the "<seq> <ts>" prefix in
//          place (no allocation per message), and echo frames are pre-encoded
//          (masked with a zero key) and written to the socket directly. This is
//          what keeps the load generator from being the bottleneck.
//
// Control, one command a line on stdin (the harness's clock is CLOCK_MONOTONIC):
//   start <t_ns>          the measurement window opens at t_ns; echo mode starts
//                         the ping-pong
//   stop <seq> <t_ns>     the window closed at t_ns; <seq> is the last line the
//                         feeder wrote. Drain (bounded), print the result, and
//                         keep the connections open until told to quit.
//   quit                  exit at once
// Commands may be read late when the event loop is swamped; nothing depends on
// when they are read: lines are measured by sequence number, and the window's
// deliveries are counted from receipt times kept in 10 ms buckets.
//
// Events, one JSON object a line on stdout:
//   {"event": "connected", ...}  once every connection attempt has finished
//   {"event": "result", ...}     after stop
//   {"event": "error", ...}      on a fatal problem (then exit 3)

const WebSocket = require('ws');

const config = JSON.parse(process.argv[2]);
const N = config.clients;
const MODE = config.mode;
const RAW = (config.parser || 'raw') === 'raw';
const MEASURE_FROM = config.measureFrom || 0;
// Latency of every line, or of the lines whose number is a multiple of this
// (a uniform sample that spares the parsing where throughput is the point).
const LATENCY_EVERY = config.latencyEvery || 1;
const URLS = config.urls || [config.url];

function now() {
  return Number(process.hrtime.bigint());
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function die(message) {
  emit({ event: 'error', error: message });
  process.exit(3);
}

// Every process stops by itself.
setTimeout(() => die(`loadgen self-timeout after ${config.maxSeconds} s`),
  config.maxSeconds * 1000).unref();

// ---- receipt times: messages (broadcast) or round trips (echo) per 10 ms ----
const T0 = now();
const BUCKET_NS = 1e7;
const buckets = new Float64Array(Math.ceil(config.maxSeconds * 100) + 2);

function countAt(t, n) {
  const b = Math.floor((t - T0) / BUCKET_NS);
  if (b >= 0 && b < buckets.length) buckets[b] += n;
}

function countBetween(t1, t2) {
  // Whole buckets, with the two edge buckets pro rata.
  const x1 = (t1 - T0) / BUCKET_NS;
  const x2 = (t2 - T0) / BUCKET_NS;
  let total = 0;
  for (let b = Math.max(0, Math.floor(x1)); b < Math.min(buckets.length, Math.ceil(x2)); b++) {
    const overlap = Math.min(b + 1, x2) - Math.max(b, x1);
    if (overlap > 0) total += buckets[b] * overlap;
  }
  return total;
}

// ---- latency histogram (microseconds, log-linear, < 0.2 % relative error) ----
const SUB = 512;
const HBUCKETS = 1024 + 24 * SUB;

class Histogram {
  constructor() {
    this.counts = new Float64Array(HBUCKETS);
    this.n = 0;
    this.max = 0;
    this.sum = 0;
  }

  record(us, times) {
    if (us < 0) us = 0;
    if (us > this.max) this.max = us;
    this.sum += us * times;
    this.n += times;
    let v = Math.floor(us);
    if (v > 0x3fffffff) v = 0x3fffffff;
    let index;
    if (v < 1024) {
      index = v;
    } else {
      const shift = (31 - Math.clz32(v)) - 9;
      index = 1024 + (shift - 1) * SUB + ((v >>> shift) - SUB);
    }
    this.counts[index] += times;
  }

  static lower(index) {
    if (index < 1024) return index;
    const k = index - 1024;
    return ((k % SUB) + SUB) * 2 ** (Math.floor(k / SUB) + 1);
  }

  static width(index) {
    return index < 1024 ? 1 : 2 ** (Math.floor((index - 1024) / SUB) + 1);
  }

  percentile(p) {
    if (this.n === 0) return null;
    const rank = Math.max(1, Math.ceil(this.n * p));
    let seen = 0;
    for (let i = 0; i < HBUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.max, Histogram.lower(i) + Histogram.width(i) / 2);
    }
    return this.max;
  }

  summary() {
    const ms = (us) => (us === null ? null : us / 1000);
    return {
      samples: this.n,
      p50_ms: ms(this.percentile(0.5)),
      p90_ms: ms(this.percentile(0.9)),
      p99_ms: ms(this.percentile(0.99)),
      p999_ms: ms(this.percentile(0.999)),
      max_ms: this.n ? this.max / 1000 : null,
      mean_ms: this.n ? this.sum / this.n / 1000 : null,
    };
  }
}

// ---- per-client state, in flat arrays ----
const sockets = new Array(N).fill(null); // ws.WebSocket once open
const isOpen = new Uint8Array(N);
const lastSeq = new Float64Array(N).fill(-1);
const measured = new Float64Array(N); // messages with MEASURE_FROM <= seq <= stopSeq
const gaps = new Float64Array(N);
const disorder = new Float64Array(N);
const sentAt = new Float64Array(N); // echo: time of the outstanding send
const waiting = new Uint8Array(N); // echo: a send awaits its echo
const closeCodes = {};
const connectErrors = {};
const hist = new Histogram();

let stopSeq = Infinity;
let windowStart = null;
let windowEnd = null;
let running = false; // echo: keep ping-ponging
let lastProgress = now();
let totalMessages = 0;
let lastMessageAt = 0;

// One broadcast message, received at time t; bytes [p, end) are its payload
// (end may be short of the message's end: only the prefix is needed).
function onLine(i, buf, p, end, t) {
  let seq = 0;
  let c;
  while (p < end && (c = buf[p]) !== 32) {
    seq = seq * 10 + (c - 48);
    p++;
  }
  const prev = lastSeq[i];
  if (seq >= MEASURE_FROM && seq <= stopSeq) {
    measured[i]++;
    if (LATENCY_EVERY === 1 || seq % LATENCY_EVERY === 0) {
      p++;
      let ts = 0;
      while (p < end && (c = buf[p]) !== 32) {
        ts = ts * 10 + (c - 48);
        p++;
      }
      hist.record((t - ts) / 1000, 1);
    }
    if (seq <= prev) {
      disorder[i]++;
    } else {
      const from = Math.max(prev + 1, MEASURE_FROM); // measured lines skipped before this one
      if (seq > from) gaps[i] += seq - from;
    }
  } else if (seq <= prev) {
    disorder[i]++;
  }
  lastSeq[i] = seq;
}

const echoText = Buffer.alloc(config.echoSize || 32, 0x65); // "eee..."
// A client frame must be masked; a zero masking key leaves the payload as is.
const echoFrame = Buffer.concat([Buffer.from([0x81, 0x80 | echoText.length, 0, 0, 0, 0]), echoText]);

function sendEcho(i) {
  waiting[i] = 1;
  sentAt[i] = now();
  if (RAW) sockets[i]._socket.write(echoFrame);
  else sockets[i].send(echoText, { binary: false });
}

function onEcho(i, t) {
  if (!waiting[i]) return;
  waiting[i] = 0;
  if (windowStart !== null && t >= windowStart && (windowEnd === null || t <= windowEnd)) {
    hist.record((t - sentAt[i]) / 1000, 1);
  }
  countAt(t, 1);
  if (running && isOpen[i]) sendEcho(i);
}

function onMessage(i, buf, p, end, t) {
  totalMessages++;
  if (MODE === 'echo') onEcho(i, t);
  else onLine(i, buf, p, end, t);
}

// ---- the raw frame parser (server-to-client frames are never masked) ----
const PREFIX = 64; // enough of a payload for "<seq> <ts> "
const rest = new Array(N).fill(null); // bytes of an incomplete frame head
const skip = new Float64Array(N); // payload bytes of the current frame still to skip

let firstCloseAt = null;
let lastCloseAt = null;

function onClose(i, code) {
  if (isOpen[i]) {
    isOpen[i] = 0;
    lastCloseAt = now();
    if (firstCloseAt === null) firstCloseAt = lastCloseAt;
    closeCodes[code] = (closeCodes[code] || 0) + 1;
  }
}

function onChunk(i, chunk) {
  const t = now();
  lastProgress = t;
  let buf = chunk;
  let p = 0;
  if (rest[i] !== null) {
    buf = Buffer.concat([rest[i], chunk]);
    rest[i] = null;
  } else if (skip[i] > 0) {
    if (skip[i] >= buf.length) {
      skip[i] -= buf.length;
      return;
    }
    p = skip[i];
    skip[i] = 0;
  }
  const n = buf.length;
  let messages = 0;
  while (p < n) {
    if (p + 2 > n) break;
    const b0 = buf[p];
    const len7 = buf[p + 1] & 0x7f;
    let head = 2;
    let len = len7;
    if (len7 === 126) {
      head = 4;
      if (p + 4 > n) break;
      len = buf.readUInt16BE(p + 2);
    } else if (len7 === 127) {
      head = 10;
      if (p + 10 > n) break;
      len = buf.readUInt32BE(p + 2) * 4294967296 + buf.readUInt32BE(p + 6);
    }
    const start = p + head;
    const frameEnd = start + len;
    const opcode = b0 & 0x0f;
    const need = Math.min(frameEnd, start + PREFIX);
    if (need > n) break; // wait for the prefix (or the whole short frame)
    if (opcode === 1 || opcode === 2) {
      messages++;
      onMessage(i, buf, start, need, t);
    } else if (opcode === 8) {
      onClose(i, len >= 2 ? buf.readUInt16BE(start) : 1005);
      // Answer as a client must (RFC 6455 5.5.1): echo the code in a masked
      // close frame (zero key), then end our side.
      const code = len >= 2 && start + 2 <= n ? buf.subarray(start, start + 2) : Buffer.alloc(0);
      sockets[i]._socket.end(Buffer.concat([Buffer.from([0x88, 0x80 | code.length, 0, 0, 0, 0]), code]));
    } else if (opcode === 9 && frameEnd <= n) {
      sockets[i].pong(buf.subarray(start, frameEnd)); // keep-alive: a client that answers stays
    }
    if (frameEnd > n) {
      skip[i] = frameEnd - n;
      p = n;
      break;
    }
    p = frameEnd;
  }
  if (p < n) rest[i] = Buffer.from(buf.subarray(p));
  if (messages) {
    lastMessageAt = t;
    if (MODE !== 'echo') countAt(t, messages);
  }
}

// ---- connecting ----
function connectOne(i) {
  return new Promise((resolve) => {
    let settled = false;
    const ws = new WebSocket(URLS[i % URLS.length], {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: config.connectTimeoutMs,
      maxPayload: 64 * 1024 * 1024,
    });
    const fail = (why) => {
      if (settled) return;
      settled = true;
      connectErrors[why] = (connectErrors[why] || 0) + 1;
      resolve(false);
    };
    ws.on('open', () => {
      settled = true;
      sockets[i] = ws;
      isOpen[i] = 1;
      if (RAW) {
        // Called synchronously from ws's setSocket(): anything already read
        // was unshift()ed and has not been emitted yet, so nothing is lost.
        const socket = ws._socket;
        socket.removeAllListeners('data');
        socket.on('data', (chunk) => onChunk(i, chunk));
        socket.on('close', () => onClose(i, 1006));
      }
      resolve(true);
    });
    ws.on('error', (err) => fail(String(err.code || err.message).slice(0, 60)));
    ws.on('unexpected-response', (req, res) => {
      fail(`HTTP ${res.statusCode}`);
      req.destroy();
    });
    ws.on('close', (code) => {
      if (!settled) fail(`closed ${code}`);
      else onClose(i, code);
    });
    if (!RAW) {
      ws.on('message', (data) => {
        const t = now();
        lastProgress = t;
        lastMessageAt = t;
        if (MODE !== 'echo') countAt(t, 1);
        onMessage(i, data, 0, data.length, t);
      });
    }
  });
}

async function connectAll() {
  const began = now();
  let next = 0;
  let connected = 0;
  const perUrl = URLS.map(() => 0);
  const worker = async () => {
    while (next < N) {
      const i = next++;
      if (await connectOne(i)) {
        connected++;
        perUrl[i % URLS.length]++;
      }
    }
  };
  const workers = [];
  for (let k = 0; k < Math.min(config.connectConcurrency, N); k++) workers.push(worker());
  await Promise.all(workers);
  const seconds = (now() - began) / 1e9;
  emit({
    event: 'connected',
    requested: N,
    connected,
    failed: N - connected,
    connect_s: seconds,
    connect_rate: connected / seconds,
    connect_errors: connectErrors,
    ...(config.urls ? { connected_per_url: perUrl } : {}),
  });
}

// ---- the window ----
function openCount() {
  let open = 0;
  for (let i = 0; i < N; i++) open += isOpen[i];
  return open;
}

function start(t) {
  windowStart = t;
  if (MODE === 'echo') {
    running = true;
    for (let i = 0; i < N; i++) if (isOpen[i]) sendEcho(i);
  }
}

function drained() {
  for (let i = 0; i < N; i++) {
    if (!isOpen[i]) continue;
    if (MODE === 'echo' ? waiting[i] : lastSeq[i] < stopSeq) return false;
  }
  return true;
}

function stop(seq, t) {
  windowEnd = t;
  running = false;
  if (MODE !== 'echo') stopSeq = seq;
  const began = now();
  lastProgress = Math.max(lastProgress, began);
  const check = () => {
    const t2 = now();
    const done = drained();
    if (done || t2 - began > config.drainMs * 1e6 || (t2 - lastProgress) / 1e6 > config.idleDrainMs) {
      report((t2 - began) / 1e9, done);
    } else {
      setTimeout(check, 10);
    }
  };
  check();
}

function report(drainSeconds, complete) {
  const seconds = (windowEnd - windowStart) / 1e9;
  const open = openCount();
  let connected = 0;
  let delivered = 0;
  let deliveredOpen = 0;
  let gapTotal = 0;
  let disorderTotal = 0;
  let minOpen = Infinity;
  let caughtUp = 0;
  let deliveredCaughtUp = 0;
  // The last line the server broadcast, as far as anyone can tell: the highest
  // one any client got (a server that reads slowly leaves the rest in its pipe).
  let reference = MEASURE_FROM - 1;
  for (let i = 0; i < N; i++) if (sockets[i] && lastSeq[i] <= stopSeq) reference = Math.max(reference, lastSeq[i]);
  for (let i = 0; i < N; i++) {
    if (!sockets[i]) continue;
    connected++;
    delivered += measured[i];
    if (isOpen[i]) {
      deliveredOpen += measured[i];
      minOpen = Math.min(minOpen, measured[i]);
      if (lastSeq[i] >= reference && reference >= MEASURE_FROM) {
        caughtUp++;
        deliveredCaughtUp += measured[i];
      }
    }
    gapTotal += gaps[i];
    disorderTotal += disorder[i];
  }
  const inWindow = countBetween(windowStart, windowEnd);
  const result = {
    event: 'result',
    mode: MODE,
    parser: RAW ? 'raw' : 'ws',
    window_s: seconds,
    drain_s: drainSeconds,
    drain_complete: complete,
    clients_connected: connected,
    clients_open_at_end: open,
    close_codes: closeCodes,
    first_close_s: firstCloseAt === null ? null : (firstCloseAt - windowStart) / 1e9,
    // On the harness's clock (CLOCK_MONOTONIC ns): when the first and the last
    // client saw its connection end.
    first_close_ns: firstCloseAt,
    last_close_ns: lastCloseAt,
    latency: hist.summary(),
    total_messages: totalMessages,
    last_message_after_window_s: lastMessageAt ? (lastMessageAt - windowEnd) / 1e9 : null,
  };
  if (MODE === 'echo') {
    result.round_trips = inWindow;
    result.round_trips_per_s = inWindow / seconds;
  } else {
    const per = Number.isFinite(stopSeq) ? Math.max(0, stopSeq - MEASURE_FROM + 1) : 0;
    result.first_seq = MEASURE_FROM;
    result.last_seq = stopSeq;
    result.expected_per_client = per;
    result.expected = per * connected;
    result.delivered = delivered;
    result.delivered_pct = per * connected ? (100 * delivered) / (per * connected) : null;
    result.delivered_open_pct = per * open ? (100 * deliveredOpen) / (per * open) : null;
    result.min_delivered_open = open ? minOpen : null;
    // Kept up: still open after the drain, and got the last line the server broadcast.
    const perBroadcast = Math.max(0, reference - MEASURE_FROM + 1);
    result.last_seq_broadcast = reference;
    result.lines_never_broadcast = Number.isFinite(stopSeq) ? stopSeq - reference : null;
    result.clients_caught_up = caughtUp;
    result.delivered_caught_up_pct = perBroadcast * caughtUp
      ? (100 * deliveredCaughtUp) / (perBroadcast * caughtUp) : null;
    result.gaps = gapTotal;
    result.disorder = disorderTotal;
    result.window_deliveries = inWindow;
    result.deliveries_per_s = inWindow / seconds;
  }
  // Stay connected: the harness reads the server's memory with every client
  // still there, then stops this process (or "quit", or the self-timeout).
  emit(result);
}

// ---- control channel ----
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    const words = pending.slice(0, nl).trim().split(/\s+/);
    pending = pending.slice(nl + 1);
    if (words[0] === 'start') start(Number(words[1]));
    else if (words[0] === 'stop') stop(Number(words[1]), Number(words[2]));
    else if (words[0] === 'quit') process.exit(0);
  }
});
process.stdin.on('end', () => process.exit(0)); // the harness went away

connectAll().catch((err) => die(String(err && err.stack)));
