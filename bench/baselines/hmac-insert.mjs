// Baseline: the naive durable ingest. node:http, HMAC check, then one INSERT per request
// with postgres.js (pool of 10) before answering 202.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import postgres from "postgres";

const secret = process.env.WEBHOOK_SECRET;
const sql = postgres(process.env.DATABASE_URL, { max: 10, onnotice: () => {} });
await sql`create table if not exists baseline_deliveries (id text primary key, payload jsonb not null, received_at timestamptz not null default now())`;
const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    const body = Buffer.concat(chunks);
    const expected = createHmac("sha256", secret).update(body).digest();
    const given = Buffer.from(String(req.headers["x-hub-signature-256"] ?? "").replace(/^sha256=/, ""), "hex");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      res.writeHead(401).end();
      return;
    }
    try {
      await sql`insert into baseline_deliveries (id, payload) values (${String(req.headers["x-github-delivery"])}, ${sql.json(JSON.parse(body.toString()))}) on conflict do nothing`;
      res.writeHead(202, { "content-type": "application/json" }).end('{"ok":true}');
    } catch (error) {
      res.writeHead(500).end(String(error));
    }
  });
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`listening ${server.address().port}\n`));
process.on("SIGTERM", () =>
  server.close(async () => {
    await sql.end();
    process.exit(0);
  }),
);
