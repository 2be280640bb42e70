/**
 * Reads the state PyTorch's own dynamic rendezvous (`torch.distributed.elastic.rendezvous.
 * dynamic_rendezvous`, c10d backend) keeps in a store: key `torch.rendezvous.<run id>` holds
 * base64(pickle(_RendezvousState)), or the sentinel "Y2FuaW1hZGFt" until the first write
 * (`C10dRendezvousBackend`). Known layouts: PyTorch 1.13 (`_NodeDesc.fqdn`, naive UTC datetimes) and
 * 2.x (`_NodeDesc.addr`, `redundancy_list`, UTC-aware datetimes). Anything else decodes to
 * `{ format: "unknown" }` with the reason, never to a guess.
 */

import { isKind, type PyDict, type PyValue, readPickle } from "./pickle.js";

/** A `_NodeDesc`: `addr` is PyTorch 2.x's field (`fqdn` in 1.x). Its id is `addr_pid_localId`, as its repr. */
export interface TorchNode {
  readonly id: string;
  readonly addr: string;
  readonly pid: number;
  readonly localId: number;
}

/** A decoded `_RendezvousState`. Times are epoch milliseconds (with microseconds as the fraction). */
export interface TorchRendezvousState {
  readonly round: number;
  readonly complete: boolean;
  /** End of the last call (the round completes then if still waiting), or null. */
  readonly deadline: number | null;
  readonly closed: boolean;
  /** Participants with their rank (ranks are meaningful once `complete`), by rank. */
  readonly participants: readonly { readonly node: TorchNode; readonly rank: number }[];
  readonly waitList: readonly TorchNode[];
  /** PyTorch 2.x only (spares beyond max_nodes); empty in 1.x. */
  readonly redundancyList: readonly TorchNode[];
  readonly lastHeartbeats: readonly { readonly node: TorchNode; readonly at: number }[];
}

/** What a `torch.rendezvous.<run id>` value holds. */
export type TorchStateReading =
  | { readonly format: "pytorch"; readonly state: TorchRendezvousState }
  /** The backend exists but no node wrote a state yet. */
  | { readonly format: "empty" }
  | { readonly format: "unknown"; readonly reason: string };

/** PyTorch's placeholder value of a backend key with no state yet. */
export const TORCH_NULL_SENTINEL = "Y2FuaW1hZGFt";
const STATE_CLASS = "torch.distributed.elastic.rendezvous.dynamic_rendezvous._RendezvousState";
const NODE_CLASS = "torch.distributed.elastic.rendezvous.dynamic_rendezvous._NodeDesc";

class Unknown extends Error {}

/**
 * Largest state value decoded, bytes (base64): PyTorch's state for 10,000 nodes is ~0.8 MB. A larger
 * value reads as an unknown format without being decoded (a 61 MB one took 1.1 s each time).
 */
export const MAX_TORCH_STATE_BYTES = 16 * 1024 * 1024;

/** Decodes the value of a `torch.rendezvous.<run id>` key. Never throws. */
export function decodeTorchState(value: Uint8Array): TorchStateReading {
  if (value.length > MAX_TORCH_STATE_BYTES) {
    return {
      format: "unknown",
      reason: `the value is ${value.length} bytes, more than ${MAX_TORCH_STATE_BYTES} (PyTorch's state for 10,000 nodes is ~0.8 MB): not decoded`,
    };
  }
  const text = Buffer.from(value).toString("latin1").trim();
  if (text === TORCH_NULL_SENTINEL) return { format: "empty" };
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    return { format: "unknown", reason: "the value is not base64 (not PyTorch's c10d rendezvous backend)" };
  }
  try {
    return { format: "pytorch", state: toState(readPickle(Buffer.from(text, "base64"))) };
  } catch (err) {
    return { format: "unknown", reason: err instanceof Error ? err.message : String(err) };
  }
}

const decoded = new WeakMap<Uint8Array, TorchStateReading>();

/**
 * `decodeTorchState`, remembered per value object: a store engine keeps a value's bytes until the key is
 * written again, so the monitor (which decodes each write) and every later read of the same value share
 * one decoding. The value must not be modified afterwards.
 */
export function readTorchState(value: Uint8Array): TorchStateReading {
  let reading = decoded.get(value);
  if (reading === undefined) {
    reading = decodeTorchState(value);
    decoded.set(value, reading);
  }
  return reading;
}

function toState(root: PyValue): TorchRendezvousState {
  if (!isKind(root, "object") || className(root.cls) !== STATE_CLASS) {
    throw new Unknown(`the pickle holds ${describe(root)}, not PyTorch's _RendezvousState`);
  }
  const fields = attributes(root.state, "_RendezvousState");
  const field = (name: string): PyValue => {
    if (!fields.has(name)) throw new Unknown(`_RendezvousState has no ${name} (an unknown PyTorch version)`);
    return fields.get(name)!;
  };
  const participants = dictEntries(field("participants"), "participants").map(([node, rank]) => ({
    node: toNode(node),
    rank: int(rank, "a participant's rank"),
  }));
  participants.sort((a, b) => a.rank - b.rank || a.node.id.localeCompare(b.node.id));
  const deadline = field("deadline");
  return {
    round: int(field("round"), "round"),
    complete: bool(field("complete"), "complete"),
    deadline: deadline === null ? null : toTime(deadline),
    closed: bool(field("closed"), "closed"),
    participants,
    waitList: setItems(field("wait_list"), "wait_list").map(toNode),
    redundancyList: fields.has("redundancy_list")
      ? setItems(field("redundancy_list"), "redundancy_list").map(toNode)
      : [],
    lastHeartbeats: dictEntries(field("last_heartbeats"), "last_heartbeats").map(([node, at]) => ({
      node: toNode(node),
      at: toTime(at),
    })),
  };
}

function toNode(v: PyValue): TorchNode {
  if (!isKind(v, "object") || className(v.cls) !== NODE_CLASS) throw new Unknown(`a node is ${describe(v)}`);
  const f = attributes(v.state, "_NodeDesc");
  const addr = f.get("addr") ?? f.get("fqdn");
  if (typeof addr !== "string") throw new Unknown("_NodeDesc has neither addr nor fqdn");
  const pid = int(f.get("pid") ?? null, "_NodeDesc.pid");
  const localId = int(f.get("local_id") ?? null, "_NodeDesc.local_id");
  return { id: `${addr}_${pid}_${localId}`, addr, pid, localId };
}

/**
 * A `datetime.datetime` as epoch ms. Its pickle is `datetime(bytes10[, tzinfo])`: year (2 bytes, big
 * endian), month (high bit: fold), day, hour, minute, second, microsecond (3 bytes). Naive datetimes are UTC
 * (PyTorch 1.x uses `datetime.utcnow()`).
 */
function toTime(v: PyValue): number {
  if (!isKind(v, "object") || className(v.cls) !== "datetime.datetime")
    throw new Unknown(`a time is ${describe(v)}`);
  const [packed, tz] = v.args;
  if (!(packed instanceof Uint8Array) || packed.length !== 10)
    throw new Unknown("a datetime is not 10 bytes");
  const b = packed;
  const utc = Date.UTC(b[0]! * 256 + b[1]!, (b[2]! & 0x7f) - 1, b[3]!, b[4]!, b[5]!, b[6]!);
  const micros = (b[7]! << 16) | (b[8]! << 8) | b[9]!;
  return utc + micros / 1000 - (tz === undefined || tz === null ? 0 : offsetMs(tz));
}

/** A `datetime.timezone(timedelta(days, seconds, microseconds)[, name])` offset in ms. */
function offsetMs(tz: PyValue): number {
  if (!isKind(tz, "object") || className(tz.cls) !== "datetime.timezone")
    throw new Unknown(`a tzinfo is ${describe(tz)}`);
  const delta = tz.args[0];
  if (!isKind(delta, "object") || className(delta.cls) !== "datetime.timedelta")
    throw new Unknown("a timezone without offset");
  const [days = 0, seconds = 0, micros = 0] = delta.args.map((a) => int(a, "a timedelta field"));
  return days * 86_400_000 + seconds * 1000 + micros / 1000;
}

function className(cls: PyValue): string | undefined {
  return isKind(cls, "global") ? `${cls.module}.${cls.name}` : undefined;
}

/** An object's `__dict__` as BUILD set it (a dict, or the dict of a `(dict, slots)` pair). */
function attributes(state: PyValue | undefined, what: string): Map<string, PyValue> {
  const dict = Array.isArray(state) ? state[0] : state;
  if (!isKind(dict, "dict")) throw new Unknown(`${what} has no attribute dict`);
  const out = new Map<string, PyValue>();
  for (const [k, v] of dict.entries) if (typeof k === "string") out.set(k, v);
  return out;
}

function dictEntries(v: PyValue, what: string): PyDict["entries"] {
  if (!isKind(v, "dict")) throw new Unknown(`${what} is ${describe(v)}, not a dict`);
  return v.entries;
}

function setItems(v: PyValue, what: string): PyValue[] {
  if (!isKind(v, "set")) throw new Unknown(`${what} is ${describe(v)}, not a set`);
  return v.items;
}

function int(v: PyValue, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v))
    throw new Unknown(`${what} is ${describe(v)}, not an int`);
  return v;
}

function bool(v: PyValue, what: string): boolean {
  if (typeof v !== "boolean") throw new Unknown(`${what} is ${describe(v)}, not a bool`);
  return v;
}

function describe(v: PyValue | undefined): string {
  if (v === null) return "None";
  if (v instanceof Uint8Array) return "bytes";
  if (Array.isArray(v)) return "a tuple or list";
  if (typeof v !== "object") return `${typeof v} ${String(v).slice(0, 40)}`;
  if (v.kind === "object") return `an object of ${className(v.cls) ?? "an unnamed class"}`;
  return `a ${v.kind}`;
}
