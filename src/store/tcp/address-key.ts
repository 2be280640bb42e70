/**
 * The key under which a server counts a client's address for its per-address limits (auth-throttle.ts,
 * the TCP store's connection cap): an IPv4 address as is, an IPv6 address by its /64 network, since one
 * host, or one customer of a provider, is routinely given a whole /64 and can pick any address in it.
 */

import { isIP } from "node:net";

/**
 * The per-address key of `address` (a peer's IP literal, as `socket.remoteAddress`): an IPv4 address
 * itself; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack listener sees of IPv4 peers)
 * as that IPv4 address; any other IPv6 address as its /64 (`2001:db8:0:1::/64`, zone dropped). Anything
 * that is not an IP literal (a socket already closed has none: `undefined`) is returned as is, or as
 * "unknown".
 */
export function addressKey(address: string | undefined): string {
  if (address === undefined || address === "") return "unknown";
  const family = isIP(address);
  if (family === 4) return address;
  if (family !== 6) return address;
  const groups = ipv6Groups(address);
  if (groups === undefined) return address;
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi, lo] = [groups[6]!, groups[7]!];
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  if (groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1) return "::1";
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(":")}::/64`;
}

/** Whether a key of `addressKey` is a loopback address (127.0.0.0/8 or ::1): a client on this machine. */
export function isLoopbackKey(key: string): boolean {
  return key === "::1" || (key.startsWith("127.") && isIP(key) === 4);
}

/** The eight 16-bit groups of an IPv6 literal (zone dropped, a dotted IPv4 tail as two groups). */
function ipv6Groups(address: string): number[] | undefined {
  const zone = address.indexOf("%");
  let text = (zone < 0 ? address : address.slice(0, zone)).toLowerCase();
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    const octets = tail.split(".").map(Number);
    const hi = (octets[0]! << 8) | octets[1]!;
    const lo = (octets[2]! << 8) | octets[3]!;
    text = `${text.slice(0, lastColon + 1)}${hi.toString(16)}:${lo.toString(16)}`;
  }
  const halves = text.split("::");
  const parse = (part: string | undefined): number[] =>
    part === undefined || part === "" ? [] : part.split(":").map((g) => Number.parseInt(g, 16));
  const head = parse(halves[0]);
  const rest = parse(halves[1]);
  const zeros = halves.length === 2 ? 8 - head.length - rest.length : 0;
  const groups = [...head, ...new Array<number>(Math.max(zeros, 0)).fill(0), ...rest];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g)) ? groups : undefined;
}
