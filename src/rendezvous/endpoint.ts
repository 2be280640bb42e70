/**
 * Rendezvous endpoints: parsing `host[:port]` as PyTorch's `parse_rendezvous_endpoint`, formatting, and
 * telling whether a host names this machine (PyTorch `_matches_machine_hostname`), all from
 * `torch/distributed/elastic/rendezvous/utils.py`.
 */

import { promises as dns } from "node:dns";
import { BlockList, isIP, isIPv6 } from "node:net";
import { hostname, networkInterfaces } from "node:os";
import { InvalidArgumentError } from "../errors.js";

/** Default port of a rendezvous endpoint, as torchrun's c10d backend (`DEFAULT_PORT = 29400`). */
export const DEFAULT_RENDEZVOUS_PORT = 29400;

/** A parsed endpoint. `host` never has brackets (IPv6 addresses are bare). */
export interface RendezvousEndpoint {
  readonly host: string;
  readonly port: number;
}

/** Labels, IPv4 and IPv6 characters: PyTorch's `^[\w\.:-]+$` (Python's `\w` is Unicode-aware). */
const HOST_PATTERN = /^[\p{L}\p{N}_.:-]+$/u;
const PORT_PATTERN = /^[0-9]{1,5}$/;

/**
 * Splits `endpoint` into host and port, leaving `port` undefined when the endpoint has none. Follows
 * PyTorch's `parse_rendezvous_endpoint`: blank means `localhost`; `[v6addr]` and `[v6addr]:port` take the
 * brackets off; otherwise the text after the last `:` is the port. Differences from PyTorch: an unbracketed
 * text that is a whole IPv6 address (`::1`, `fe80::1`) is a host without port (PyTorch would read its last
 * group as a port), and IPv6 zone ids (`fe80::1%eth0`) are accepted.
 *
 * Throws `InvalidArgumentError` (naming the endpoint) for a port that is not 0..65535, an empty or invalid
 * host, or unbalanced brackets.
 */
export function splitRendezvousEndpoint(endpoint: string): { host: string; port: number | undefined } {
  if (typeof endpoint !== "string") {
    throw new InvalidArgumentError(`the rendezvous endpoint must be a string, got ${typeof endpoint}`);
  }
  const text = endpoint.trim();
  if (text === "") return { host: "localhost", port: undefined };
  let host: string;
  let portText: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    const rest = close < 0 ? "" : text.slice(close + 1);
    if (close < 0 || (rest !== "" && !rest.startsWith(":"))) {
      throw new InvalidArgumentError(`the rendezvous endpoint '${text}' must be [address] or [address]:port`);
    }
    host = text.slice(1, close);
    portText = rest === "" ? undefined : rest.slice(1);
  } else if (isIPv6(text)) {
    host = text;
  } else {
    const colon = text.lastIndexOf(":");
    host = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? undefined : text.slice(colon + 1);
  }
  const port = portText === undefined ? undefined : parsePort(portText, text);
  if (!(HOST_PATTERN.test(host) || isIPv6(host))) {
    throw new InvalidArgumentError(
      `the host of the rendezvous endpoint '${text}' must be a dot-separated list of labels, an IPv4 address ` +
        `or an IPv6 address, got ${JSON.stringify(host)}`,
    );
  }
  return { host, port };
}

function parsePort(portText: string, endpoint: string): number {
  const port = PORT_PATTERN.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 0 && port <= 65535)) {
    throw new InvalidArgumentError(
      `the port of the rendezvous endpoint '${endpoint}' must be an integer in 0..65535, got ${JSON.stringify(portText)}`,
    );
  }
  return port;
}

/**
 * Parses `host`, `host:port`, `[v6addr]`, `[v6addr]:port` or a bare IPv6 address; `defaultPort` (default
 * 29400) applies when there is no port, and a blank endpoint means `localhost`, as PyTorch's
 * `parse_rendezvous_endpoint`. Throws `InvalidArgumentError` as `splitRendezvousEndpoint` does, or for a
 * `defaultPort` outside 0..65535.
 */
export function parseRendezvousEndpoint(
  endpoint: string,
  defaultPort: number = DEFAULT_RENDEZVOUS_PORT,
): RendezvousEndpoint {
  checkPort(defaultPort, "defaultPort");
  const { host, port } = splitRendezvousEndpoint(endpoint);
  return { host, port: port ?? defaultPort };
}

/** `host:port`, with IPv6 addresses in brackets (`[::1]:29400`). Throws for a port outside 0..65535. */
export function formatEndpoint(host: string, port: number): string {
  checkPort(port, "port");
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  return bare.includes(":") ? `[${bare}]:${port}` : `${bare}:${port}`;
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidArgumentError(`${what} must be an integer in 0..65535, got ${String(port)}`);
  }
}

/**
 * The address this node advertises when none is configured: the machine's hostname. PyTorch uses
 * `socket.getfqdn()`; Node has no synchronous FQDN lookup, and the hostname is what most clusters resolve.
 * Override it with `RendezvousParameters.localAddr` (torchrun `--local-addr`) or config `local_addr`.
 */
export function defaultLocalAddr(): string {
  return hostname();
}

/** True when `host` is "localhost" or a loopback address (`isLoopbackAddress`): only this machine reaches it. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || isLoopbackAddress(host);
}

/** True when `address` (an IP literal) is a loopback address: 127.0.0.0/8, ::1, or IPv4-mapped loopback. */
export function isLoopbackAddress(address: string): boolean {
  const family = familyOf(address);
  return family !== undefined && LOOPBACK.check(stripZone(address), family);
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** Options of `matchesMachineHostname`. */
export interface MatchHostOptions {
  /** Give up each DNS lookup after this many milliseconds, counting it as no match (default 5000). */
  timeoutMs?: number;
}

/**
 * Whether `host` names this machine, as PyTorch's `_matches_machine_hostname` (used to decide who hosts the
 * c10d store when `is_host` is not set): `localhost`, loopback addresses, this machine's hostname and the
 * names its addresses resolve back to (the FQDN), any address of a local network interface, and any
 * name that resolves to a loopback or local interface address. Never throws: a failed or slow lookup
 * counts as no match. May be wrong for CNAMEs that resolve to addresses NATed onto this machine.
 */
export async function matchesMachineHostname(host: string, options: MatchHostOptions = {}): Promise<boolean> {
  const name = host
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, "$1");
  if (name === "") return false;
  if (name === "localhost") return true;
  const local = localAddresses();
  if (isIP(stripZone(name)) !== 0) return isLocalAddress(name, local);
  const machine = hostname().toLowerCase();
  if (name === machine) return true;
  const timeoutMs = options.timeoutMs ?? 5000;
  const [hostAddresses, machineNames] = await Promise.all([
    lookupAll(name, timeoutMs),
    reverseNames(machine, timeoutMs),
  ]);
  if (machineNames.has(name)) return true;
  return hostAddresses.some((address) => isLocalAddress(address, local));
}

function isLocalAddress(address: string, local: BlockList): boolean {
  const family = familyOf(address);
  if (family === undefined) return false;
  const bare = stripZone(address);
  return LOOPBACK.check(bare, family) || local.check(bare, family);
}

/** Every address of every local network interface. */
function localAddresses(): BlockList {
  const list = new BlockList();
  let interfaces: ReturnType<typeof networkInterfaces> = {};
  try {
    interfaces = networkInterfaces();
  } catch {
    // Some sandboxes forbid listing interfaces; loopback and DNS checks still work.
  }
  for (const entries of Object.values(interfaces)) {
    for (const entry of entries ?? []) {
      const family = familyOf(entry.address);
      if (family !== undefined) list.addAddress(stripZone(entry.address), family);
    }
  }
  return list;
}

/** The names this machine's addresses resolve back to (what Python's `getfqdn` reports, and more). */
async function reverseNames(machine: string, timeoutMs: number): Promise<Set<string>> {
  const names = new Set<string>();
  const addresses = await lookupAll(machine, timeoutMs);
  const found = await Promise.all(
    addresses.map((address) =>
      withTimeout(
        dns.lookupService(address, 0).then((r) => r.hostname),
        timeoutMs,
      ),
    ),
  );
  for (const name of found) if (name !== undefined) names.add(name.toLowerCase());
  return names;
}

async function lookupAll(name: string, timeoutMs: number): Promise<string[]> {
  const found = await withTimeout(dns.lookup(name, { all: true, verbatim: true }), timeoutMs);
  return found?.map((entry) => entry.address) ?? [];
}

/** `promise`'s value, or `undefined` when it fails or takes longer than `timeoutMs`. */
function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), timeoutMs);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      () => {
        clearTimeout(timer);
        resolve(undefined);
      },
    );
  });
}

function familyOf(address: string): "ipv4" | "ipv6" | undefined {
  const family = isIP(stripZone(address));
  return family === 4 ? "ipv4" : family === 6 ? "ipv6" : undefined;
}

function stripZone(address: string): string {
  const percent = address.indexOf("%");
  return percent < 0 ? address : address.slice(0, percent);
}
