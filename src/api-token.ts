import { randomBytes } from "node:crypto";
import { chmod, open, readFile, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "./logger.js";
import { Secret } from "./secrets.js";

/**
 * The API token: API_TOKEN when set; otherwise the one in `$DATA_DIR/api-token`, generated
 * on first start with mode 0600. Only the file's path is ever logged, never the token.
 */
export async function ensureApiToken(dataDir: string, fromEnv: Secret | undefined, log: Logger): Promise<Secret> {
  if (fromEnv) return fromEnv;
  const file = apiTokenPath(dataDir);
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing?.trim()) {
    const mode = (await stat(file)).mode & 0o777;
    if (mode & 0o077) {
      await chmod(file, 0o600);
      log.warn({ file, mode: mode.toString(8) }, "api-token file was readable by others; set its mode to 0600");
    }
    log.info({ file }, `API token read from ${file}`);
    return new Secret(existing.trim());
  }
  const token = randomBytes(32).toString("base64url");
  try {
    const handle = await open(file, "wx", 0o600);
    await handle.writeFile(`${token}\n`);
    await handle.close();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return new Secret((await readFile(file, "utf8")).trim());
    throw error;
  }
  log.info({ file }, `generated an API token in ${file} (mode 0600); send it as Authorization: Bearer <token>`);
  return new Secret(token);
}

export function apiTokenPath(dataDir: string): string {
  return path.join(dataDir, "api-token");
}
