'use strict';
// Peer server: Node's `ws` 8, as a user would write it (the ws README's
// broadcast pattern). Broadcasts each line of standard input to every open
// client and echoes each client's messages back.
//
//   NODE_PATH=bench/.node/node_modules node server.js --port 8000 [--host 127.0.0.1]

const readline = require('readline');
const { WebSocket, WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const k = args.indexOf(name);
  return k >= 0 ? args[k + 1] : fallback;
};
const host = option('--host', '127.0.0.1');
const port = Number(option('--port'));

// Compression is off by default on a ws server, like the other servers here.
const wss = new WebSocketServer({ host, port });

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(line);
  }
});
// The end of input does not stop the server.
