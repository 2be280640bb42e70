/**
 * The rendezvous handler registry: backend name -> handler creator. Mirrors PyTorch's
 * `RendezvousHandlerRegistry` (`rendezvous/api.py`) and `get_rendezvous_handler` (`rendezvous/registry.py`).
 * Nothing is registered here; the built-in backends register themselves in `builtins.ts`.
 */

import { InvalidArgumentError, RendezvousError } from "../errors.js";
import type {
  RendezvousHandler,
  RendezvousHandlerCreator,
  RendezvousHandlerOptions,
  RendezvousParameters,
} from "./api.js";
import { validateRendezvousParameters } from "./parameters.js";

/** A set of named handler creators. Most code uses the process-wide `rendezvousHandlerRegistry`. */
export class RendezvousHandlerRegistry {
  readonly #creators = new Map<string, RendezvousHandlerCreator>();

  /**
   * Registers `creator` under `backend`. Registering the same creator again is a no-op; registering a
   * different creator under a taken name throws `InvalidArgumentError` (as PyTorch's `register`), so two
   * libraries cannot silently replace each other's backend. Also throws for an empty name or a
   * non-function creator.
   */
  register(backend: string, creator: RendezvousHandlerCreator): void {
    if (typeof backend !== "string" || backend.trim() === "") {
      throw new InvalidArgumentError(
        `the rendezvous backend name must be a non-empty string, got ${JSON.stringify(backend)}`,
      );
    }
    if (typeof creator !== "function") {
      throw new InvalidArgumentError(
        `the creator of rendezvous backend '${backend}' must be a function, got ${typeof creator}`,
      );
    }
    const current = this.#creators.get(backend);
    if (current !== undefined && current !== creator) {
      throw new InvalidArgumentError(
        `the rendezvous backend '${backend}' cannot be registered with ${describe(creator)}: it is already ` +
          `registered with ${describe(current)}`,
      );
    }
    this.#creators.set(backend, creator);
  }

  /** Removes `backend`; true when it was registered. For tests and plugins that unload. */
  unregister(backend: string): boolean {
    return this.#creators.delete(backend);
  }

  /** True when `backend` is registered. */
  has(backend: string): boolean {
    return this.#creators.has(backend);
  }

  /** The registered backend names, sorted. */
  list(): string[] {
    return [...this.#creators.keys()].sort();
  }

  /**
   * Validates `params` (`validateRendezvousParameters`), then creates a handler with the creator registered
   * under `params.backend`. Throws `InvalidArgumentError` for bad parameters or an unknown backend (the
   * message lists the registered ones), whatever the creator throws, and a `RendezvousError` when the
   * handler's `getBackend()` is not `params.backend` (PyTorch's sanity check; the handler is shut down).
   */
  async create(
    params: RendezvousParameters,
    options: RendezvousHandlerOptions = {},
  ): Promise<RendezvousHandler> {
    const valid = validateRendezvousParameters(params);
    const creator = this.#creators.get(valid.backend);
    if (creator === undefined) {
      const known = this.list();
      throw new InvalidArgumentError(
        `the rendezvous backend '${valid.backend}' is not registered; registered backends: ` +
          `${known.length === 0 ? "none" : known.join(", ")}. Did you forget to call registerRendezvousHandler?`,
      );
    }
    const handler = await creator(valid, options);
    const actual = handler.getBackend();
    if (actual !== valid.backend) {
      await handler.shutdown().catch(() => false);
      throw new RendezvousError(
        `the rendezvous backend '${actual}' does not match the requested backend '${valid.backend}'`,
      );
    }
    return handler;
  }
}

function describe(creator: RendezvousHandlerCreator): string {
  return creator.name === "" ? "an anonymous function" : `'${creator.name}'`;
}

/** The process-wide registry that launchers and the CLI use (PyTorch `rendezvous_handler_registry`). */
export const rendezvousHandlerRegistry = new RendezvousHandlerRegistry();

/** Registers a backend in the process-wide registry; see `RendezvousHandlerRegistry.register`. */
export function registerRendezvousHandler(backend: string, creator: RendezvousHandlerCreator): void {
  rendezvousHandlerRegistry.register(backend, creator);
}

/**
 * Creates a handler from the process-wide registry (PyTorch `get_rendezvous_handler`); see
 * `RendezvousHandlerRegistry.create`.
 */
export function createRendezvousHandler(
  params: RendezvousParameters,
  options: RendezvousHandlerOptions = {},
): Promise<RendezvousHandler> {
  return rendezvousHandlerRegistry.create(params, options);
}

/** The backends registered in the process-wide registry, sorted. */
export function listRendezvousBackends(): string[] {
  return rendezvousHandlerRegistry.list();
}
