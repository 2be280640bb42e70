/** Byte helpers shared by the stores. */

import { InvalidArgumentError } from "../errors.js";
import type { StoreValue } from "./store.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `value` as bytes (strings are UTF-8 encoded). */
export function toBytes(value: StoreValue): Uint8Array {
  return typeof value === "string" ? encoder.encode(value) : value;
}

/** `bytes` decoded as UTF-8 (invalid sequences become U+FFFD). */
export function bytesToText(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** Byte-wise equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Concatenation of `a` and `b` into a new array. */
export function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Throws unless `key` is a string of well-formed Unicode. Stores send keys as UTF-8, where a lone UTF-16
 * surrogate would become U+FFFD and so name another key ("a\uD800" and "a\uFFFD" would be one key);
 * every store refuses such keys, so that they behave alike (as PyTorch's Python client, which cannot
 * encode them either).
 */
export function checkKey(key: string): void {
  if (typeof key !== "string") {
    throw new InvalidArgumentError(`a store key must be a string, got ${typeof key}`);
  }
  if (!(key as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new InvalidArgumentError(
      `store key ${JSON.stringify(key)} holds a lone UTF-16 surrogate, which UTF-8 cannot encode`,
    );
  }
}
