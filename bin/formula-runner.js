#!/usr/bin/env node
// Runs the TypeScript sources through tsx, so the command works straight after
// `npm install`. Production images run the compiled build instead
// (`npm run build`, then `node dist/src/main.js serve`: less memory, faster start).
import { register } from "tsx/esm/api";

register();
await import(new URL("../src/main.ts", import.meta.url).href);
