'use strict';
// The load generator's ceiling: a server that costs as little as possible per
// delivered message, so that what the load generator receives from it is what
// the load generator can receive at all.
//
// Usage: node ceiling_server.js <port> <line size> <max seconds>
//
// Echo: each client frame is answered with one pre-encoded frame of the same
// size (the load generator's echo payload is constant), parsed and written on
// the raw socket after ws's handshake.
// Broadcast: on "blast" (stdin) it encodes a block of text frames once,
// "<seq> <CLOCK_MONOTONIC ns> <padding>" like the harness's lines, and writes
// the same bytes to every client's socket, block after block; a socket with
// more than AHEAD bytes pending is waited for (so every client gets every
// frame, and nobody runs out of data to read). Stdin commands:
//   blast      start
//   measure N  number the following frames from N (the measured range), print
//              {"event": "measuring", "seq": N}
//   stop       stop; print {"event": "stopped", "last_seq": last frame written}

const WebSocket = require('ws');

const port = Number(process.argv[2]);
const lineSize = Number(process.argv[3]);
const maxSeconds = Number(process.argv[4] || 120);
const FRAMES_PER_BLOCK = 1024;
const AHEAD = 512 * 1024; // bytes a socket may have pending in Node before we wait for it

setTimeout(() => process.exit(3), maxSeconds * 1000).unref();

const wss = new WebSocket.WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
const replies = new Map(); // payload size -> pre-encoded reply frame

function reply(size) {
  let bytes = replies.get(size);
  if (!bytes) {
    bytes = Buffer.concat(frame(Buffer.alloc(size, 0x65)));
    replies.set(size, bytes);
  }
  return bytes;
}

function rawEcho(socket) {
  let rest = null;
  socket.removeAllListeners('data');
  socket.on('data', (chunk) => {
    const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
    rest = null;
    let p = 0;
    const out = [];
    while (p + 2 <= buf.length) {
      const len7 = buf[p + 1] & 0x7f;
      const ext = len7 === 126 ? 2 : 0; // client frames here are small
      const head = 2 + ext + ((buf[p + 1] & 0x80) ? 4 : 0);
      if (p + head > buf.length) break;
      const len = ext ? buf.readUInt16BE(p + 2) : len7;
      if (p + head + len > buf.length) break;
      if ((buf[p] & 0x0f) === 1 || (buf[p] & 0x0f) === 2) out.push(reply(len));
      p += head + len;
    }
    if (p < buf.length) rest = Buffer.from(buf.subarray(p));
    if (out.length) socket.write(out.length === 1 ? out[0] : Buffer.concat(out));
  });
}

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  rawEcho(ws._socket);
});

let seq = 0;
let blasting = false;

function frame(payload) {
  const n = payload.length;
  let header;
  if (n < 126) {
    header = Buffer.from([0x81, n]);
  } else {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 126;
    header.writeUInt16BE(n, 2);
  }
  return [header, payload];
}

function block() {
  const parts = [];
  const ts = process.hrtime.bigint().toString();
  for (let k = 0; k < FRAMES_PER_BLOCK; k++) {
    const head = `${seq++} ${ts} `;
    const pad = Math.max(0, lineSize - 1 - head.length);
    parts.push(...frame(Buffer.from(head + 'x'.repeat(pad))));
  }
  return Buffer.concat(parts);
}

async function blast() {
  while (blasting) {
    const bytes = block();
    const waits = [];
    for (const ws of wss.clients) {
      const socket = ws._socket;
      if (ws.readyState !== WebSocket.OPEN || !socket) continue;
      socket.write(bytes);
      if (socket.writableLength > AHEAD) {
        waits.push(new Promise((resolve) => {
          socket.once('drain', resolve);
          socket.once('close', resolve);
        }));
      }
    }
    if (waits.length) await Promise.all(waits);
    else await new Promise(setImmediate);
  }
}

let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    const [command, arg] = pending.slice(0, nl).trim().split(/\s+/);
    pending = pending.slice(nl + 1);
    if (command === 'blast' && !blasting) {
      blasting = true;
      blast();
    } else if (command === 'measure') {
      seq = Number(arg);
      process.stdout.write(JSON.stringify({ event: 'measuring', seq }) + '\n');
    } else if (command === 'stop') {
      blasting = false;
      process.stdout.write(JSON.stringify({ event: 'stopped', last_seq: seq - 1 }) + '\n');
    }
  }
});
process.stdin.on('end', () => process.exit(0));
