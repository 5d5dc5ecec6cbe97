// Baseline: the ceiling of the HTTP path. A bare node:http server that reads the body,
// checks the HMAC in constant time and answers 202. No database.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const secret = process.env.WEBHOOK_SECRET;
const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const expected = createHmac("sha256", secret).update(body).digest();
    const given = Buffer.from(String(req.headers["x-hub-signature-256"] ?? "").replace(/^sha256=/, ""), "hex");
    const ok = given.length === expected.length && timingSafeEqual(given, expected);
    res.writeHead(ok ? 202 : 401, { "content-type": "application/json" });
    res.end(ok ? '{"ok":true}' : '{"ok":false}');
  });
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`listening ${server.address().port}\n`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
