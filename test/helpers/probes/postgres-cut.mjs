// Reproduces porsager/postgres #1154/#1208 against a minimal PostgreSQL wire-protocol server
// in this process: a reserved connection whose socket is cut, then one more query on it.
// Unpatched, postgres.js throws `TypeError: Cannot read properties of null (reading 'write')`
// from a setImmediate callback and the process dies; patched, the query is rejected with
// CONNECTION_CLOSED. Prints `outcome <code>` and exits 0 when the process survives.
// Mode `types`: the connection is cut while postgres.js fetches the array types on
// connect, a promise nobody awaits (unpatched: an unhandled rejection that ends the process).
// With a third argument, the server's process guard (src/process-guard.ts, run with
// `node --import tsx`) is installed instead of the exit-on-crash handler, and a query that
// never settles counts as `hung` after 1 s.
// Usage: node postgres-cut.mjs <path of postgres.js's src/index.js> [reserved|types] [guard]
import net from "node:net";
import { pathToFileURL } from "node:url";

const { default: postgres } = await import(pathToFileURL(process.argv[2]).href);
const mode = process.argv[3] ?? "reserved";

/** One backend message: type byte, int32 length, body. */
function message(type, body = Buffer.alloc(0)) {
  const head = Buffer.alloc(5);
  head.write(type, 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}
const int32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const ready = message("Z", Buffer.from("I"));

const sockets = new Set();
let typesCut = false;
const server = net.createServer((socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
  socket.on("error", () => {});
  let buffer = Buffer.alloc(0);
  let started = false;
  socket.on("data", (data) => {
    buffer = Buffer.concat([buffer, data]);
    const out = [];
    for (;;) {
      if (!started) {
        if (buffer.length < 4) break;
        const length = buffer.readInt32BE(0);
        if (buffer.length < length) break;
        buffer = buffer.subarray(length);
        started = true;
        // AuthenticationOk, BackendKeyData, ReadyForQuery.
        out.push(message("R", int32(0)), message("K", Buffer.concat([int32(1), int32(2)])), ready);
        continue;
      }
      if (buffer.length < 5) break;
      const type = String.fromCharCode(buffer[0]);
      const length = buffer.readInt32BE(1);
      if (buffer.length < length + 1) break;
      const body = buffer.subarray(5, length + 1);
      buffer = buffer.subarray(length + 1);
      if (mode === "types" && type === "P" && body.includes("typarray") && !typesCut) {
        typesCut = true;
        // A reset, as a dying server or a cut network gives: the client sees ECONNRESET.
        socket.resetAndDestroy();
        return;
      }
      // Parse, Bind, Describe (no parameters, no rows), Execute, Sync: a query with an empty result.
      if (type === "P") out.push(message("1"));
      else if (type === "B") out.push(message("2"));
      else if (type === "D") out.push(message("t", Buffer.from([0, 0])), message("n"));
      else if (type === "E") out.push(message("C", Buffer.from("SELECT 0\0")));
      else if (type === "S") out.push(ready);
      else if (type === "X") socket.end();
    }
    if (out.length > 0) socket.write(Buffer.concat(out));
  });
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));

if (process.argv[4] === "guard") {
  const { installProcessGuard } = await import("../../../src/process-guard.ts");
  const log = { error: (fields, message) => process.stderr.write(`guard: ${message}: ${fields.err.message}\n`) };
  log.fatal = log.error;
  installProcessGuard(process, log, (code) => process.exit(code));
} else {
  process.on("uncaughtException", (error, origin) => {
    process.stderr.write(`${origin}: ${error.stack}\n`);
    process.exit(3);
  });
}
const settled = (query) =>
  Promise.race([
    query.then(
      () => "ok",
      (error) => error.code ?? error.message,
    ),
    new Promise((resolve) => setTimeout(resolve, 1000, "hung")),
  ]);

const sql = postgres({
  host: "127.0.0.1",
  port: server.address().port,
  user: "probe",
  database: "probe",
  max: 2,
  onnotice: () => {},
});
if (mode === "types") {
  const outcome = await sql`select 1`.then(
    () => "ok",
    (error) => error.code ?? error.message,
  );
  await new Promise((resolve) => setTimeout(resolve, 100));
  process.stdout.write(`outcome ${outcome}\n`);
  process.exit(0);
}
const reserved = await sql.reserve();
await reserved`select 1`;
for (const socket of sockets) socket.destroy();
await new Promise((resolve) => setTimeout(resolve, 100));
const outcome = await settled(reserved`select 2`);
process.stdout.write(`outcome ${outcome}\n`);
process.exit(0);
