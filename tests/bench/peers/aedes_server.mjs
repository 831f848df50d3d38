// Aedes as a bench peer: in-memory persistence, one plain TCP listener on 127.0.0.1.
// Usage: node aedes_server.mjs <port>   (prints one "listening" line when ready)
import net from "node:net";
import process from "node:process";
import { Aedes } from "aedes";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node aedes_server.mjs <port>");
  process.exit(2);
}

// Defaults on purpose (concurrency 100, in-memory persistence): the bench measures Aedes as
// people run it. Aedes has no per-client in-flight or queue limits to align with the others.
const broker = await Aedes.createBroker();
// The other brokers and the generator disable Nagle; without this Aedes would pay up to
// 40 ms of delayed-ACK interplay on small writes and the latency comparison would be unfair.
const server = net.createServer({ noDelay: true }, broker.handle);
server.listen(port, "127.0.0.1", () => console.log(`aedes listening on 127.0.0.1:${port}`));

function shutdown() {
  server.close();
  broker.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
