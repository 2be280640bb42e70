/**
 * rdzv's public API. Everything exported here is supported; deep imports are not.
 */

// Backends
export { type C10dHandlerOptions, createC10dRendezvousHandler } from "./backends/c10d.js";
export { createEtcdRendezvousHandler, type EtcdHandlerOptions } from "./backends/etcd.js";
export { type EtcdBackendOptions, EtcdRendezvousBackend } from "./backends/etcd-backend.js";
export { createRedisRendezvousHandler, type RedisHandlerOptions } from "./backends/redis.js";
export { type StoreBackendOptions, StoreRendezvousBackend } from "./backends/store-backend.js";
// Errors
export {
  AbortedError,
  ErrorCode,
  findStoreGone,
  hasErrorCode,
  InvalidArgumentError,
  RendezvousAuthError,
  RendezvousClosedError,
  RendezvousConnectionError,
  RendezvousError,
  type RendezvousErrorOptions,
  RendezvousGracefulExitError,
  RendezvousStateError,
  RendezvousStoreGoneError,
  RendezvousTimeoutError,
  StoreError,
} from "./errors.js";
// Logging
export { createConsoleLogger, type Logger, LogLevel, silentLogger } from "./log.js";
// Rendezvous
export type {
  RendezvousCallOptions,
  RendezvousConfigValue,
  RendezvousHandler,
  RendezvousHandlerCreator,
  RendezvousHandlerOptions,
  RendezvousInfo,
  RendezvousParameters,
  RendezvousStoreInfo,
} from "./rendezvous/api.js";
export type { NodeDescriptor, RendezvousBackend, RendezvousState, SlotLease } from "./rendezvous/backend.js";
export { registerBuiltinRendezvousHandlers } from "./rendezvous/builtins.js";
export {
  createDynamicRendezvousHandler,
  DEFAULT_DYNAMIC_SETTINGS,
  type DynamicHandlerOptions,
  type DynamicHandlerSettings,
  DynamicRendezvousHandler,
  type RendezvousEvents,
} from "./rendezvous/dynamic-handler.js";
export {
  DEFAULT_RENDEZVOUS_PORT,
  formatEndpoint,
  type MatchHostOptions,
  matchesMachineHostname,
  parseRendezvousEndpoint,
  type RendezvousEndpoint,
} from "./rendezvous/endpoint.js";
export {
  parseRendezvousConfig,
  type RendezvousSettings,
  resolveRendezvousSettings,
  validateRendezvousParameters,
} from "./rendezvous/parameters.js";
export {
  createRendezvousHandler,
  listRendezvousBackends,
  RendezvousHandlerRegistry,
  registerRendezvousHandler,
  rendezvousHandlerRegistry,
} from "./rendezvous/registry.js";
export { GoneReason, type RoundOutcome } from "./rendezvous/round.js";
export {
  createStaticRendezvousHandler,
  type StaticHandlerOptions,
  StaticRendezvousHandler,
} from "./rendezvous/static-handler.js";
// Dashboard, run inspector, metrics (rdzv serve --http-port, rdzv status)
export {
  createDashboardApp,
  type DashboardApp,
  type DashboardAppOptions,
} from "./server/dashboard-app.js";
export { type HttpServer, type HttpServerOptions, startHttpServer } from "./server/http-server.js";
export {
  type InspectListOptions,
  type InspectOptions,
  inspectAllRuns,
  inspectRun,
  inspectRunList,
  type KeepAliveTimes,
  listRunRefs,
  MAX_KEYS_PER_LIST,
  MAX_RUNS_LISTED,
  type RunList,
  type RunRef,
  type SummarizeOptions,
  summarizeRuns,
} from "./server/inspector.js";
export {
  type EngineKeyReaderOptions,
  engineKeyReader,
  type KeyReader,
  type StoreKeyReaderOptions,
  storeKeyReader,
} from "./server/key-reader.js";
export { createServerMetrics, type ServerMetrics, type ServerMetricsOptions } from "./server/metrics.js";
export {
  RendezvousMonitor,
  type RendezvousMonitorEvents,
  type RendezvousMonitorOptions,
} from "./server/monitor.js";
export { PickleError } from "./server/pickle.js";
export { type RunOwner, runOwnerOf } from "./server/run-owner.js";
export {
  type RunRetention,
  type RunRetentionOptions,
  type RunRetentionStats,
  startRunRetention,
} from "./server/run-retention.js";
export {
  NodeStatus,
  type NodeView,
  RunState,
  type RunSummary,
  type RunView,
  type TimelineEvent,
} from "./server/run-view.js";
export {
  decodeTorchState,
  type TorchNode,
  type TorchRendezvousState,
  type TorchStateReading,
} from "./server/torch-state.js";
// Stores
export { bytesToText, toBytes } from "./store/bytes.js";
export {
  type ConnectEtcdOptions,
  connectEtcdStore,
  DEFAULT_ETCD_PORT,
  type EtcdTlsFiles,
  parseEtcdEndpoints,
} from "./store/etcd/connect.js";
export { EtcdStore, type EtcdStoreOptions } from "./store/etcd/store.js";
// The engine behind a TCP store server (`server.engine`), for RendezvousMonitor.attach and engineKeyReader.
export type { KvEngine } from "./store/kv-engine.js";
export { MemoryStore, type MemoryStoreOptions } from "./store/memory-store.js";
export { PrefixStore } from "./store/prefix-store.js";
export { type ConnectRedisOptions, connectRedisStore, DEFAULT_REDIS_PORT } from "./store/redis/connect.js";
export { RedisStore } from "./store/redis/store.js";
export {
  type CallOptions,
  DEFAULT_STORE_TIMEOUT_MS,
  isQueueStore,
  type QueuePopOptions,
  type QueueStore,
  type Store,
  type StoreValue,
} from "./store/store.js";
export {
  connectTCPStore,
  type GiveUpRule,
  type Refusal,
  TCPStore,
  type TCPStoreEvents,
  type TCPStoreOptions,
} from "./store/tcp/client.js";
export { DEFAULT_PROTOCOL_LIMITS, Dialect, type ProtocolLimits } from "./store/tcp/protocol.js";
export {
  type AuthThrottle,
  type AuthThrottleOptions,
  type ConnectionEvent,
  createTCPStoreServer,
  DEFAULT_SERVER_LIMITS,
  DEFAULT_SERVER_PORT,
  DEFAULT_SERVER_TIMEOUTS,
  type DisconnectEvent,
  type OpenFileRoom,
  type ProtocolErrorEvent,
  type ServerLimits,
  type ServerSecurityOptions,
  type ServerStats,
  type ServerTimeouts,
  TCPStoreServer,
  type TCPStoreServerEvents,
  type TCPStoreServerOptions,
} from "./store/tcp/server.js";

import { registerBuiltinRendezvousHandlers as register } from "./rendezvous/builtins.js";

register();
