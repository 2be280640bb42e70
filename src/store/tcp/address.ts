/** Host/port formatting shared by servers, clients and the CLI. */

import { isIPv6 } from "node:net";

/** `host:port`, with brackets around IPv6 addresses (`[::1]:29400`). */
export function formatHostPort(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}
