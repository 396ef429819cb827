'use strict';
// The resume storm's clients (bench/faults.py): one Node process holds every
// trio-broadcast.v1 connection, resets them all at once, and resumes them all.
//
// Usage: node resume.js '<json config>'   (ws is resolved through NODE_PATH)
//
// Config: url, clients, firstSeq (the number of the feed's first line),
//   connectConcurrency, connectTimeoutMs, maxSeconds, drainMs, catchUpMs,
//   retries (reconnection attempts per client after a failed one).
//
// Each client offers `Sec-WebSocket-Protocol: trio-broadcast.v1`; `ws` opens the
// connection (handshake checks), then a small frame parser reads the JSON
// messages in place: a `line` message's ID and the `<seq> <t_ns>` the harness
// wrote at the start of the line. A client keeps the ID of the last line it
// parsed whole (the hello's ID before any line), and reconnects with
// `?since=<that ID>`. Every line must be the one after the previous one:
// a client's lines, before and after the reset, must be the feed itself, from
// firstSeq to the last line written, each once, in order.
//
// Control, one command a line on stdin:
//   reset            every client drops its connection with a TCP RST (SO_LINGER 0,
//                    no close frame), then all reconnect at once with ?since=
//   stop <seq>       the feed ended at <seq>: wait (bounded) until every client
//                    has it, print the result, stay connected until told to quit
//   quit             exit at once
// A client whose connection ends otherwise (a close frame, a drop) reconnects
// with ?since= too, as a resuming client would, and is counted.
//
// Events, one JSON object a line on stdout:
//   {"event": "connected", ...}   once every first connection attempt has finished
//   {"event": "reset", ...}       once every connection was reset
//   {"event": "caught_up", ...}   once every client has received a line written
//                                 after its reconnection opened (or catchUpMs passed)
//   {"event": "result", ...}      after stop
//   {"event": "error", ...}       on a fatal problem (then exit 3)

const WebSocket = require('ws');

const config = JSON.parse(process.argv[2]);
const N = config.clients;
const FIRST = config.firstSeq;
const PROTOCOL = 'trio-broadcast.v1';

function now() {
  return Number(process.hrtime.bigint()); // CLOCK_MONOTONIC ns, the harness's clock
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function die(message) {
  emit({ event: 'error', error: message });
  process.exit(3);
}

setTimeout(() => die(`resume.js self-timeout after ${config.maxSeconds} s`),
  config.maxSeconds * 1000).unref();

// ---- per-client state ----
const sockets = new Array(N).fill(null); // the net.Socket of the current connection
const generation = new Uint32Array(N); // events of an older connection are ignored
const isOpen = new Uint8Array(N);
const lastSeq = new Float64Array(N).fill(FIRST - 1);
const lastId = new Array(N).fill(null); // the ID to resume from (a string)
const idBuf = new Array(N).fill(null); // the last line's ID, kept in place until needed
const idStart = new Uint32Array(N);
const idEnd = new Uint32Array(N);
const received = new Float64Array(N);
const receivedBeforeReset = new Float64Array(N);
const missing = new Float64Array(N);
const duplicates = new Float64Array(N); // a line at or before the last one
const openedAt = new Float64Array(N); // when the reconnection opened
const caughtUpAt = new Float64Array(N); // first line written after that
const reconnects = new Float64Array(N);
const gapNotices = [];
const unexpectedEnds = {}; // how connections ended that this process did not reset
const connectErrors = {};
const helloAfterResume = { same: 0, other: 0 };
const protocolErrors = [];
const rest = new Array(N).fill(null);

let resetAt = null;
let stopSeq = Infinity;

function count(table, key) {
  table[key] = (table[key] || 0) + 1;
}

function resumeId(i) {
  if (idBuf[i] !== null) {
    lastId[i] = idBuf[i].toString('latin1', idStart[i], idEnd[i]);
    idBuf[i] = null;
  }
  return lastId[i];
}

// ---- messages ----
const LINE = Buffer.from('{"type":"line","id":"');
const LINE_FIELD = Buffer.from('","line":"');

function onLine(i, buf, p, end, t) {
  // {"type":"line","id":"ID","line":"<seq> <t_ns> xxx"}: IDs and the harness's
  // lines need no escaping, so the fields are read where they are.
  const idFrom = p + LINE.length;
  const idTo = buf.indexOf(0x22, idFrom); // '"'
  if (idTo < 0 || idTo >= end || buf.compare(LINE_FIELD, 0, LINE_FIELD.length, idTo, idTo + LINE_FIELD.length) !== 0) {
    protocolErrors.push(`client ${i}: ${buf.toString('utf8', p, Math.min(end, p + 80))}`);
    return;
  }
  let q = idTo + LINE_FIELD.length;
  let seq = 0;
  let c;
  while (q < end && (c = buf[q]) !== 32) {
    seq = seq * 10 + (c - 48);
    q++;
  }
  q++;
  let stamp = 0;
  while (q < end && (c = buf[q]) !== 32) {
    stamp = stamp * 10 + (c - 48);
    q++;
  }
  const prev = lastSeq[i];
  if (seq <= prev) {
    duplicates[i]++;
  } else {
    missing[i] += seq - prev - 1;
    lastSeq[i] = seq;
  }
  received[i]++;
  idBuf[i] = buf;
  idStart[i] = idFrom;
  idEnd[i] = idTo;
  if (resetAt !== null && caughtUpAt[i] === 0 && openedAt[i] !== 0 && stamp >= openedAt[i]) {
    caughtUpAt[i] = t;
    if (++caughtUpCount === N) caughtUp('all');
  }
}

function onOther(i, text, resumedFrom) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (err) {
    protocolErrors.push(`client ${i}: not JSON: ${text.slice(0, 80)}`);
    return;
  }
  if (message.type === 'hello') {
    if (typeof message.id !== 'string') protocolErrors.push(`client ${i}: hello ${text}`);
    if (resumedFrom !== null) {
      if (message.id === resumedFrom) helloAfterResume.same++;
      else helloAfterResume.other++;
    }
    // Nothing received on this connection yet: its hello is where to resume from.
    idBuf[i] = null;
    lastId[i] = message.id;
  } else if (message.type === 'gap') {
    gapNotices.push({ client: i, since: message.since, missed: message.missed });
  } else if (message.type !== 'echo') {
    protocolErrors.push(`client ${i}: unexpected ${text.slice(0, 80)}`);
  }
}

// ---- the frame parser (server frames are never masked) ----
const ZERO_MASK = Buffer.alloc(4);

function control(opcode, payload) {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), ZERO_MASK, payload]);
}

function onChunk(i, chunk, resumedFrom) {
  const t = now();
  let buf = chunk;
  if (rest[i] !== null) {
    buf = Buffer.concat([rest[i], chunk]);
    rest[i] = null;
  }
  const n = buf.length;
  let p = 0;
  while (p + 2 <= n) {
    const opcode = buf[p] & 0x0f;
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
    const end = start + len;
    if (end > n) break; // every frame is parsed whole
    if (opcode === 1) {
      if (buf[start + 9] === 0x6c && buf.compare(LINE, 0, LINE.length, start, start + LINE.length) === 0) {
        onLine(i, buf, start, end, t);
      } else {
        onOther(i, buf.toString('utf8', start, end), resumedFrom);
      }
    } else if (opcode === 9) {
      sockets[i].write(control(0xa, buf.subarray(start, end)));
    } else if (opcode === 8) {
      const code = len >= 2 ? buf.readUInt16BE(start) : 1005;
      const reason = buf.toString('utf8', start + 2, end);
      sockets[i].end(control(0x8, buf.subarray(start, Math.min(end, start + 2))));
      lost(i, `close ${code}${reason ? ' ' + reason : ''}`);
      return;
    } else {
      protocolErrors.push(`client ${i}: opcode ${opcode}`);
    }
    p = end;
  }
  if (p < n) rest[i] = Buffer.from(buf.subarray(p));
}

// ---- connections ----
function lost(i, why) {
  // The current connection ended without this process resetting it: resume.
  if (!isOpen[i]) return;
  isOpen[i] = 0;
  generation[i]++;
  count(unexpectedEnds, why);
  reconnect(i, 0);
}

function connectOne(i, since) {
  return new Promise((resolve) => {
    const gen = ++generation[i];
    const url = since === null ? config.url : `${config.url}?since=${encodeURIComponent(since)}`;
    let settled = false;
    const ws = new WebSocket(url, PROTOCOL, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: config.connectTimeoutMs,
    });
    const fail = (why) => {
      if (settled) return;
      settled = true;
      count(connectErrors, why);
      resolve(false);
    };
    ws.on('open', () => {
      settled = true;
      if (ws.protocol !== PROTOCOL) {
        protocolErrors.push(`client ${i}: subprotocol ${JSON.stringify(ws.protocol)}`);
      }
      // Called synchronously from ws's setSocket(): what was already read is
      // unshift()ed and not yet emitted, so the parser below sees every byte.
      const socket = ws._socket;
      sockets[i] = socket;
      isOpen[i] = 1;
      rest[i] = null;
      socket.removeAllListeners('data');
      socket.on('data', (chunk) => { if (generation[i] === gen) onChunk(i, chunk, since); });
      socket.on('close', () => { if (generation[i] === gen) lost(i, 'dropped'); });
      resolve(true);
    });
    ws.on('error', (err) => fail(String(err.code || err.message).slice(0, 60)));
    ws.on('unexpected-response', (req, res) => {
      fail(`HTTP ${res.statusCode}`);
      req.destroy();
    });
    ws.on('close', (code) => fail(`closed ${code}`));
  });
}

async function reconnect(i, attempt) {
  reconnects[i]++;
  if (await connectOne(i, resumeId(i))) {
    openedAt[i] = now();
    return;
  }
  if (attempt >= config.retries) return; // counted in connectErrors; the result says who
  await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
  await reconnect(i, attempt + 1);
}

async function connectAll() {
  const began = now();
  let next = 0;
  let connected = 0;
  const worker = async () => {
    while (next < N) {
      if (await connectOne(next++, null)) connected++;
    }
  };
  const workers = [];
  for (let k = 0; k < Math.min(config.connectConcurrency, N); k++) workers.push(worker());
  await Promise.all(workers);
  emit({ event: 'connected', connected, connect_s: (now() - began) / 1e9, connect_errors: connectErrors });
}

// ---- the storm ----
let caughtUpCount = 0;
let caughtUpEmitted = false;
let reopened = 0;
let reopenedAt = null;

function caughtUp(why) {
  if (caughtUpEmitted) return;
  caughtUpEmitted = true;
  const since = (t) => (t - resetAt) / 1e9;
  const times = [];
  for (let i = 0; i < N; i++) if (caughtUpAt[i]) times.push(since(caughtUpAt[i]));
  times.sort((a, b) => a - b);
  emit({
    event: 'caught_up',
    complete: why === 'all',
    clients_caught_up: times.length,
    reopened,
    all_reopened_s: reopenedAt === null ? null : since(reopenedAt),
    median_s: times.length ? times[Math.floor(times.length / 2)] : null,
    max_s: times.length ? times[times.length - 1] : null,
  });
}

function reset() {
  // Every client vanishes at once, then every client comes back at once.
  openedAt.fill(0);
  for (let i = 0; i < N; i++) {
    if (!isOpen[i]) continue;
    isOpen[i] = 0;
    generation[i]++;
    resumeId(i);
    receivedBeforeReset[i] = received[i];
    sockets[i].resetAndDestroy();
  }
  resetAt = now();
  emit({ event: 'reset', t_ns: resetAt });
  for (let i = 0; i < N; i++) {
    reconnect(i, 0).then(() => {
      if (isOpen[i] && ++reopened === N) reopenedAt = now();
    });
  }
  setTimeout(() => caughtUp('timeout'), config.catchUpMs).unref();
}

function stop(seq) {
  stopSeq = seq;
  const began = now();
  const check = () => {
    let done = true;
    for (let i = 0; i < N && done; i++) if (lastSeq[i] < stopSeq) done = false;
    if (done || now() - began > config.drainMs * 1e6) report(done);
    else setTimeout(check, 10);
  };
  check();
}

function report(drained) {
  const expected = stopSeq - FIRST + 1;
  let whole = 0;
  const bad = [];
  let totalMissing = 0;
  let totalDuplicates = 0;
  const before = [];
  for (let i = 0; i < N; i++) {
    totalMissing += missing[i] + Math.max(0, stopSeq - lastSeq[i]);
    totalDuplicates += duplicates[i];
    before.push(receivedBeforeReset[i]);
    const ok = missing[i] === 0 && duplicates[i] === 0 && lastSeq[i] === stopSeq && received[i] === expected;
    if (ok) whole++;
    else if (bad.length < 10) {
      bad.push({ client: i, received: received[i], missing: missing[i], duplicates: duplicates[i], last_seq: lastSeq[i] });
    }
  }
  before.sort((a, b) => a - b);
  let open = 0;
  let totalReconnects = 0;
  for (let i = 0; i < N; i++) {
    open += isOpen[i];
    totalReconnects += reconnects[i];
  }
  emit({
    event: 'result',
    drained,
    lines: expected,
    clients: N,
    clients_with_whole_feed: whole,
    missing: totalMissing,
    duplicates: totalDuplicates,
    first_bad_clients: bad,
    lines_before_reset: { min: before[0], median: before[Math.floor(N / 2)], max: before[N - 1] },
    reconnects: totalReconnects,
    unexpected_ends: unexpectedEnds,
    connect_errors: connectErrors,
    gap_notices: gapNotices.length,
    first_gap_notices: gapNotices.slice(0, 5),
    hello_after_resume: helloAfterResume,
    protocol_errors: protocolErrors.length,
    first_protocol_errors: protocolErrors.slice(0, 5),
    open_at_end: open,
  });
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
    if (words[0] === 'reset') reset();
    else if (words[0] === 'stop') stop(Number(words[1]));
    else if (words[0] === 'quit') process.exit(0);
  }
});
process.stdin.on('end', () => process.exit(0)); // the harness went away

connectAll().catch((err) => die(String(err && err.stack)));
