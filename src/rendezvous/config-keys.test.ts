import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatUnreadConfigKey, RENDEZVOUS_CONFIG_KEYS, unreadConfigKeys } from "./config-keys.js";

describe("unreadConfigKeys", () => {
  const hints = (backend: string, keys: string[]) =>
    unreadConfigKeys(backend, keys).map((u) => [u.key, u.hint ?? null]);

  it("finds misspelt keys and suggests the nearest known one", () => {
    assert.deepEqual(
      hints("c10d", [
        "join-timeout",
        "last_call_timout",
        "JOIN_TIMEOUT",
        "keep_alive_max_attempts",
        "flavour",
      ]),
      [
        ["join-timeout", "did you mean 'join_timeout'?"],
        ["last_call_timout", "did you mean 'last_call_timeout'?"],
        ["JOIN_TIMEOUT", "did you mean 'join_timeout'?"],
        ["keep_alive_max_attempts", "did you mean 'keep_alive_max_attempt'?"],
        ["flavour", null],
      ],
    );
  });

  it("finds none among the keys each built-in backend reads", () => {
    for (const backend of ["c10d", "static", "etcd", "etcd-v2", "redis"] as const) {
      const keys = [...RENDEZVOUS_CONFIG_KEYS.common, ...RENDEZVOUS_CONFIG_KEYS[backend]];
      assert.deepEqual(unreadConfigKeys(backend, keys), [], backend);
    }
  });

  it("finds a key of another backend, and says what rdzv takes for PyTorch's own names", () => {
    assert.deepEqual(hints("c10d", ["db", "store_type", "ssl_cert"]), [
      ["db", null],
      ["store_type", "rdzv's c10d backend always uses a TCP store"],
      ["ssl_cert", null],
    ]);
    // PyTorch etcd-v2's TLS names are read (ca_cert, ssl_cert, ssl_cert_key), its legacy etcd's prefix is not.
    for (const backend of ["etcd", "etcd-v2"]) {
      assert.deepEqual(hints(backend, ["ssl_cert", "ca_cert", "etcd_prefix", "db"]), [
        ["etcd_prefix", "rdzv's etcd backend takes a key prefix as 'key_prefix'"],
        ["db", null],
      ]);
    }
  });

  it("finds none for a backend that is not built in, whose keys are unknown", () => {
    assert.deepEqual(unreadConfigKeys("mine", ["anything"]), []);
    assert.deepEqual(unreadConfigKeys("common", ["anything"]), []);
    assert.deepEqual(unreadConfigKeys("__proto__", ["anything"]), []);
  });

  it("names the key, the backend, the hint and the keys it reads", () => {
    const [unread] = unreadConfigKeys("redis", ["bd"]);
    assert.match(
      formatUnreadConfigKey(unread!),
      /^config option 'bd' is not read by the redis backend and is ignored \(did you mean 'db'\?\); it reads: join_timeout, .*, key_prefix$/,
    );
  });
});
