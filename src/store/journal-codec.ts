/**
 * The byte format of `rdzv serve --data-dir` (pure: bytes in, mutations out). Both files, the journal of
 * mutations and the snapshot that compaction writes, are an 16-byte header (8-byte magic, u64 LE
 * generation) and a sequence of records:
 *
 *   u32 LE payload length | u32 LE CRC-32 of the payload | payload
 *   payload = u8 op (1 set, 2 append, 3 delete, 4 push, 5 pop) | u32 LE key length | key (UTF-8)
 *             | value (the rest; set, append, push only)
 *
 * Journal format 2 (magic `RDZVJRN2`) adds the batch record, for a mutation of several keys at once (a
 * multi-set) that must be restored all or nothing: its members share the record's one length and CRC,
 * so a batch cut short or damaged is dropped whole.
 *
 *   payload = u8 op (6 batch) | u32 LE member count | count x (u32 LE member length | member payload)
 *
 * where a member payload is a payload of op 1 to 5. Format 1 (`RDZVJRN1`, rdzv before 2026-12: a
 * multi-set as one record per key) is read as before; opening one rewrites its magic to format 2
 * (journal-files.ts) before anything is appended, so an older rdzv refuses it (bad header) instead of
 * misreading a batch. Snapshots (`RDZVSNP1`) hold set and push records only.
 *
 * A snapshot ends with an `end` record holding the number of records before it (u64 LE), so a snapshot
 * cut short is never mistaken for a complete one.
 */

import { crc32 } from "node:zlib";
import { ErrorCode, StoreError } from "../errors.js";
import type { KeyMutation, Mutation } from "./kv-engine.js";

/** The data directory holds a file that cannot be read back: a clear error, never a silent loss. */
export class JournalCorruptError extends StoreError {
  /**
   * True when the damage is a bad journal record with intact records after it: opening with `repair`
   * (`rdzv serve --repair`) keeps the records before it and sets the rest aside.
   */
  readonly repairable: boolean;

  constructor(message: string, options?: { cause?: unknown; repairable?: boolean }) {
    super(message, ErrorCode.State, options);
    this.repairable = options?.repairable ?? false;
  }
}

/** The magic of the journal format this rdzv writes (see the module comment). */
export const JOURNAL_MAGIC = "RDZVJRN2";
/** Journal format 1: no batch records. Read, never written. */
export const JOURNAL_MAGIC_V1 = "RDZVJRN1";
export const SNAPSHOT_MAGIC = "RDZVSNP1";
export const HEADER_BYTES = 16;
const RECORD_HEADER_BYTES = 8;
const PAYLOAD_MIN_BYTES = 5;

const OP_CODES = { set: 1, append: 2, delete: 3, push: 4, pop: 5, batch: 6, end: 0xff } as const;
const KEY_OPS = new Map<number, KeyMutation["op"]>([
  [1, "set"],
  [2, "append"],
  [3, "delete"],
  [4, "push"],
  [5, "pop"],
]);

/** A file header: magic and generation. */
export function encodeHeader(magic: string, generation: number): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  buf.write(magic, 0, "latin1");
  buf.writeBigUInt64LE(BigInt(generation), 8);
  return buf;
}

function frame(payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt32LE(crc32(payload), 4);
  return Buffer.concat([header, payload]);
}

/** The payload of one key's mutation. */
function keyPayload(m: KeyMutation): Buffer {
  const key = Buffer.from(m.key, "utf8");
  const value = m.op === "delete" || m.op === "pop" ? undefined : m.value;
  const payload = Buffer.allocUnsafe(PAYLOAD_MIN_BYTES + key.length + (value?.length ?? 0));
  payload[0] = OP_CODES[m.op];
  payload.writeUInt32LE(key.length, 1);
  key.copy(payload, PAYLOAD_MIN_BYTES);
  if (value !== undefined) payload.set(value, PAYLOAD_MIN_BYTES + key.length);
  return payload;
}

/** One record for `m` (a batch is one record holding its members). */
export function encodeMutation(m: Mutation): Buffer {
  if (m.op !== "batch") return frame(keyPayload(m));
  const members = m.mutations.map(keyPayload);
  let length = PAYLOAD_MIN_BYTES;
  for (const member of members) length += 4 + member.length;
  const payload = Buffer.allocUnsafe(length);
  payload[0] = OP_CODES.batch;
  payload.writeUInt32LE(members.length, 1);
  let at = PAYLOAD_MIN_BYTES;
  for (const member of members) {
    payload.writeUInt32LE(member.length, at);
    member.copy(payload, at + 4);
    at += 4 + member.length;
  }
  return frame(payload);
}

/** The `end` record of a snapshot of `count` records. */
export function encodeEnd(count: number): Buffer {
  const payload = Buffer.alloc(9);
  payload[0] = OP_CODES.end;
  payload.writeBigUInt64LE(BigInt(count), 1);
  return frame(payload);
}

type Parsed = { kind: "mutation"; mutation: Mutation } | { kind: "end"; count: number };

/** Decodes one key mutation's payload; undefined when it is not a well-formed one. */
function parseKeyPayload(p: Buffer): KeyMutation | undefined {
  const op = KEY_OPS.get(p[0]!);
  if (op === undefined || p.length < PAYLOAD_MIN_BYTES) return undefined;
  const keyLength = p.readUInt32LE(1);
  if (PAYLOAD_MIN_BYTES + keyLength > p.length) return undefined;
  const key = p.toString("utf8", PAYLOAD_MIN_BYTES, PAYLOAD_MIN_BYTES + keyLength);
  const rest = p.subarray(PAYLOAD_MIN_BYTES + keyLength);
  if (op === "delete" || op === "pop") return rest.length === 0 ? { op, key } : undefined;
  return { op, key, value: new Uint8Array(rest) };
}

/** Decodes a batch payload: its members, each well formed, filling it exactly. */
function parseBatch(p: Buffer): Mutation | undefined {
  if (p.length < PAYLOAD_MIN_BYTES) return undefined;
  const count = p.readUInt32LE(1);
  const mutations: KeyMutation[] = [];
  let at = PAYLOAD_MIN_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + 4 > p.length) return undefined;
    const length = p.readUInt32LE(at);
    at += 4;
    if (at + length > p.length) return undefined;
    const member = parseKeyPayload(p.subarray(at, at + length));
    if (member === undefined) return undefined;
    mutations.push(member);
    at += length;
  }
  return at === p.length ? { op: "batch", mutations } : undefined;
}

/** Decodes one record's payload; undefined when it is not a well-formed one. */
function parsePayload(p: Buffer): Parsed | undefined {
  if (p[0] === OP_CODES.end) {
    return p.length === 9 ? { kind: "end", count: Number(p.readBigUInt64LE(1)) } : undefined;
  }
  const mutation = p[0] === OP_CODES.batch ? parseBatch(p) : parseKeyPayload(p);
  return mutation === undefined ? undefined : { kind: "mutation", mutation };
}

/**
 * Whether the `length` bytes at `start` can be a payload `parsePayload` accepts, judged by its op and
 * first fields only: what `parsePayload` requires of them (a key length that fits, exactly for delete
 * and pop; a batch's members, at least 9 bytes each, that fit; an end record's 9 bytes).
 */
function payloadFits(buf: Buffer, start: number, length: number): boolean {
  const op = buf[start]!;
  if (op === OP_CODES.end) return length === 9;
  if (op !== OP_CODES.batch && !KEY_OPS.has(op)) return false;
  const n = buf.readUInt32LE(start + 1);
  if (op === OP_CODES.batch) return n * (4 + PAYLOAD_MIN_BYTES) <= length - PAYLOAD_MIN_BYTES;
  if (op === OP_CODES.delete || op === OP_CODES.pop) return PAYLOAD_MIN_BYTES + n === length;
  return PAYLOAD_MIN_BYTES + n <= length;
}

/** The record at `offset`, if a complete and intact one starts there. */
function recordAt(buf: Buffer, offset: number): { parsed: Parsed; next: number } | undefined {
  if (offset + RECORD_HEADER_BYTES > buf.length) return undefined;
  const length = buf.readUInt32LE(offset);
  const start = offset + RECORD_HEADER_BYTES;
  if (length < PAYLOAD_MIN_BYTES || start + length > buf.length) return undefined;
  // Checked before the CRC: a search for intact records tries every offset of a bad tail, and the CRC of
  // each record-shaped spot in (say) a random value costs up to the rest of the file.
  if (!payloadFits(buf, start, length)) return undefined;
  const payload = buf.subarray(start, start + length);
  if (crc32(payload) !== buf.readUInt32LE(offset + 4)) return undefined;
  const parsed = parsePayload(payload);
  return parsed === undefined ? undefined : { parsed, next: start + length };
}

/** What reading a journal found. */
export interface DecodedJournal {
  readonly generation: number;
  /** 1 or 2 (see the module comment). */
  readonly format: 1 | 2;
  readonly mutations: Mutation[];
  /** Bytes of intact records (header included): where appending resumes. */
  readonly validBytes: number;
  /** Bytes after the last intact record, to be dropped (0 when none). */
  readonly droppedBytes: number;
  /**
   * Why the dropped bytes are dropped, when there are some: the last record was `cut short` (it reaches
   * past the end of the file: a write that did not finish) or `damaged` (complete by its own length, but
   * its checksum or contents are wrong: garbage a machine crash left); or, only with `repair`, the
   * journal is `corrupt` there (a bad record with intact records after it, see `corruption`).
   */
  readonly tail?: "cut short" | "damaged" | "corrupt";
  /** For a `corrupt` tail: what is wrong, as `JournalCorruptError` would have said. */
  readonly corruption?: string;
  /**
   * Intact-looking records among the dropped bytes: inside a bad last record (bytes of its value that
   * are shaped like records), or after a `corrupt` record (the chain that follows it).
   */
  readonly droppedRecords: number;
}

/** How a bad record at some offset is bad; `corruption` says why it is not a bad last record. */
interface BadRecord {
  readonly kind: "cut short" | "damaged";
  readonly corruption?: string;
  /** Intact records found inside it (a torn tail), or in the chain after it (corruption). */
  readonly records: number;
}

/**
 * Whether `p`, the first bytes of a payload of `length` bytes, is shaped as rdzv writes one: a journal op,
 * and a key length (a batch: a member count) that fits. A write cut short is always a prefix of a real
 * payload; bytes of another kind (damage on disk, garbage) mostly are not.
 */
function plausiblePrefix(p: Buffer, length: number): boolean {
  if (length < PAYLOAD_MIN_BYTES) return false;
  if (p.length === 0) return true;
  const op = p[0] === OP_CODES.batch ? "batch" : KEY_OPS.get(p[0]!);
  if (op === undefined) return false;
  if (p.length < PAYLOAD_MIN_BYTES) return true;
  const n = p.readUInt32LE(1);
  if (op === "batch") return n >= 1 && n * (4 + PAYLOAD_MIN_BYTES) <= length - PAYLOAD_MIN_BYTES;
  if (op === "delete" || op === "pop") return PAYLOAD_MIN_BYTES + n === length;
  return PAYLOAD_MIN_BYTES + n <= length;
}

/** The number of intact records chained from `offset`. */
function chainLength(buf: Buffer, offset: number): number {
  let count = 0;
  for (let r = recordAt(buf, offset); r !== undefined; r = recordAt(buf, r.next)) count++;
  return count;
}

/**
 * Tells a bad last record (a torn tail: the server or machine stopped while writing it) from a bad record
 * in the middle (corruption). The bytes after a bad record may hold intact-looking records either way: a
 * record's value may hold anything, records included. So an intact record found later proves corruption
 * only where it cannot be part of the bad record's own bytes:
 *
 * - it starts at or past the end the bad record's length field gives;
 * - or the bad record's CRC matches its bytes up to that intact record (or up to the end of the file):
 *   the record was whole and only its length field is damaged;
 * - or the bad record's first bytes are not shaped like a payload (`plausiblePrefix`): not a write of
 *   rdzv's, so not a torn one.
 *
 * Anything else, however many record-shaped bytes it holds, is a bad last record.
 */
function judgeBadRecord(buf: Buffer, at: number): BadRecord {
  if (at + RECORD_HEADER_BYTES > buf.length) return { kind: "cut short", records: 0 };
  const length = buf.readUInt32LE(at);
  const crc = buf.readUInt32LE(at + 4);
  const start = at + RECORD_HEADER_BYTES;
  const end = start + length;
  const kind = end > buf.length ? "cut short" : "damaged";
  const plausible = plausiblePrefix(buf.subarray(start, Math.min(end, buf.length)), length);
  // The CRC of its bytes up to `to`, for growing `to`: computed on from the last one (a value may hold
  // a million records; a CRC from `start` for each would take hours).
  let crcTo = start;
  let crcSoFar = 0;
  const wholeUpTo = (to: number): boolean => {
    if (to - start < PAYLOAD_MIN_BYTES) return false;
    crcSoFar = crc32(buf.subarray(crcTo, to), crcSoFar);
    crcTo = to;
    return crcSoFar === crc;
  };
  let records = 0;
  for (let later = at + 1; later + RECORD_HEADER_BYTES <= buf.length; later++) {
    if (recordAt(buf, later) === undefined) continue;
    const follow = `intact records follow at byte ${later}`;
    if (later >= end) return { kind, corruption: follow, records: chainLength(buf, later) };
    if (!plausible) {
      const why = `it is not shaped like a record of rdzv's, and ${follow}`;
      return { kind, corruption: why, records: chainLength(buf, later) };
    }
    if (wholeUpTo(later)) {
      const why = `its checksum matches its first ${later - start} bytes, not the ${length} its length field says, and ${follow}`;
      return { kind, corruption: why, records: chainLength(buf, later) };
    }
    records++;
  }
  if (kind === "cut short" && plausible && wholeUpTo(buf.length)) {
    const why = `its checksum matches its ${buf.length - start} bytes up to the end of the file, not the ${length} its length field says`;
    return { kind, corruption: why, records: 0 };
  }
  return { kind, records };
}

/**
 * A file header's magic (one of `magics`, the first being the current one) and generation. Every journal
 * and snapshot is written whole with its header through a temporary file and a rename (journal-lock.ts
 * `writeFileAtomic`), so a file shorter than a header, an empty one included, was truncated or replaced
 * afterwards: corruption like any other bad header.
 */
function checkHeader(
  buf: Buffer,
  magics: readonly string[],
  what: string,
): { magic: string; generation: number } {
  const kind = magics[0] === SNAPSHOT_MAGIC ? "snapshot" : "journal";
  if (buf.length < HEADER_BYTES) {
    throw new JournalCorruptError(
      `${what} is ${buf.length === 0 ? "empty (0 bytes)" : `${buf.length} bytes, shorter than its header`}: ` +
        `rdzv writes every ${kind} whole with its ${HEADER_BYTES}-byte header, so it was truncated or replaced`,
    );
  }
  const magic = buf.toString("latin1", 0, 8);
  if (!magics.includes(magic)) {
    const family = magics[0]!.slice(0, 7);
    const newer = magic.startsWith(family) && magic.slice(7) > magics[0]!.slice(7);
    throw new JournalCorruptError(
      newer
        ? `${what} is an rdzv ${kind} of a newer format (${magic}) than this rdzv reads (${magics.join(", ")})`
        : `${what} is not an rdzv ${kind} (bad header)`,
    );
  }
  return { magic, generation: Number(buf.readBigUInt64LE(8)) };
}

/** Options of `decodeJournal`. */
export interface DecodeJournalOptions {
  /** Report corruption as a `corrupt` tail to drop instead of throwing (see `JournalCorruptError.repairable`). */
  readonly repair?: boolean;
}

/**
 * Decodes a journal file's bytes (`what` names it in errors). A bad last record, cut short or damaged
 * (`judgeBadRecord`), is reported in `droppedBytes`, not an error. A bad record with intact records
 * after it is corruption: `JournalCorruptError` naming the offset (`repairable`), or with `repair` a
 * `corrupt` tail holding everything from that record on.
 */
export function decodeJournal(buf: Buffer, what: string, options: DecodeJournalOptions = {}): DecodedJournal {
  const { magic, generation } = checkHeader(buf, [JOURNAL_MAGIC, JOURNAL_MAGIC_V1], what);
  const format: 1 | 2 = magic === JOURNAL_MAGIC ? 2 : 1;
  const mutations: Mutation[] = [];
  let offset = HEADER_BYTES;
  while (offset < buf.length) {
    const record = recordAt(buf, offset);
    if (record === undefined || record.parsed.kind !== "mutation") {
      const bad = judgeBadRecord(buf, offset);
      const dropped = {
        generation,
        format,
        mutations,
        validBytes: offset,
        droppedBytes: buf.length - offset,
      };
      if (bad.corruption === undefined) return { ...dropped, tail: bad.kind, droppedRecords: bad.records };
      const corruption = `${what} is corrupt: bad record at byte ${offset} of ${buf.length}: ${bad.corruption}`;
      if (options.repair !== true) throw new JournalCorruptError(corruption, { repairable: true });
      return { ...dropped, tail: "corrupt", corruption, droppedRecords: bad.records };
    }
    mutations.push(record.parsed.mutation);
    offset = record.next;
  }
  return { generation, format, mutations, validBytes: offset, droppedBytes: 0, droppedRecords: 0 };
}

/** Decodes a snapshot file's bytes; any flaw is `JournalCorruptError` (snapshots are renamed into place whole). */
export function decodeSnapshot(buf: Buffer, what: string): { generation: number; mutations: KeyMutation[] } {
  const { generation } = checkHeader(buf, [SNAPSHOT_MAGIC], what);
  const mutations: KeyMutation[] = [];
  let offset = HEADER_BYTES;
  while (offset < buf.length) {
    const record = recordAt(buf, offset);
    if (record === undefined)
      throw new JournalCorruptError(`${what} is corrupt: bad record at byte ${offset}`);
    const { parsed } = record;
    if (parsed.kind === "end") {
      if (parsed.count !== mutations.length || record.next !== buf.length) {
        throw new JournalCorruptError(`${what} is corrupt: its end record does not match its contents`);
      }
      return { generation, mutations };
    }
    if (parsed.mutation.op === "batch")
      throw new JournalCorruptError(`${what} is corrupt: a batch record at byte ${offset}`);
    mutations.push(parsed.mutation);
    offset = record.next;
  }
  throw new JournalCorruptError(`${what} is incomplete: no end record`);
}
