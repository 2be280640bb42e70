/** Picking a free TCP port, as PyTorch's `get_free_port` does for the bootstrap store. */

import { createServer } from "node:net";

/** A port that was free a moment ago on `host` (default: all interfaces). */
export function pickFreePort(host?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ port: 0, ...(host === undefined ? {} : { host }) }, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
