// Aedes as a bench peer: in-memory persistence, one TCP listener on 127.0.0.1, with TLS when
// given a certificate and key (no client certificate asked, like the other brokers).
// Usage: node aedes_server.mjs <port> [<cert.pem> <key.pem>]   (prints one "listening" line)
import { readFileSync } from "node:fs";
import net from "node:net";
import process from "node:process";
import tls from "node:tls";
import { Aedes } from "aedes";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node aedes_server.mjs <port> [<cert.pem> <key.pem>]");
  process.exit(2);
}

// Defaults on purpose (concurrency 100, in-memory persistence): the bench measures Aedes as
// people run it. Aedes has no per-client in-flight or queue limits to align with the others.
const broker = await Aedes.createBroker();
// The other brokers and the generator disable Nagle; without this Aedes would pay up to
// 40 ms of delayed-ACK interplay on small writes and the latency comparison would be unfair.
const [certFile, keyFile] = process.argv.slice(3);
let server;
if (certFile === undefined) {
  server = net.createServer({ noDelay: true }, broker.handle);
} else {
  server = tls.createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) });
  server.on("connection", (socket) => socket.setNoDelay(true));
  server.on("secureConnection", broker.handle);
}
const scheme = certFile === undefined ? "tcp" : "tls";
server.listen(
  port,
  "127.0.0.1",
  () => console.log(`aedes listening on ${scheme}://127.0.0.1:${port}`),
);

function shutdown() {
  server.close();
  broker.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
