import net from "node:net";

/**
 * A TCP proxy for database fault tests: forwards to `target` until told to cut every
 * connection, or to refuse (accept and drop at once) new ones, without touching the real
 * server behind it.
 */
export interface TcpProxy {
  readonly port: number;
  /** Connections open right now (each client side counts once). */
  readonly open: number;
  /** Drops every open connection. */
  cut(): void;
  /** While true, new connections are accepted and dropped at once. */
  refuse(on: boolean): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const clients = new Set<net.Socket>();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target.port, target.host);
    clients.add(client);
    const done = () => {
      clients.delete(client);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", done).on("close", done);
    upstream.on("error", done).on("close", done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get open() {
      return clients.size;
    },
    cut() {
      for (const client of clients) client.destroy();
    },
    refuse(on) {
      refusing = on;
    },
    close: async () => {
      for (const client of clients) client.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
