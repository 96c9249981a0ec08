/*
 * Server events, per user: producers (the device hub, property changes, …) publish an event
 * of one user; subscribers (device subscriptions on resource 8, the events WebSocket) listen
 * to one event name of one user. A user's events never reach another user's listeners.
 */

/** The events this server produces, and their payloads. */
export interface ServerEvents {
  /** A device of the user connected or disconnected. */
  device_state_change: {
    device: string;
    connected: boolean;
    ts: number;
    ip?: string;
    reason?: string;
  };
  /** A device property was created, changed or deleted (`deleted`, value null). */
  device_property_update: {
    device: string;
    property: string;
    value: unknown;
    deleted?: true;
  };
  /**
   * Records were written to a bucket (REST writes, device writes, device-sourced samples),
   * one event per record, as they are accepted. Not offered to devices (SERVER_EVENTS).
   */
  bucket_write: {
    bucket: string;
    ts: number;
    data: unknown;
  };
}

export type ServerEventName = keyof ServerEvents;

/** Event names a subscriber may ask for (topics are served by the TopicBroker). */
export const SERVER_EVENTS: readonly ServerEventName[] = ['device_state_change', 'device_property_update'];

export function isServerEvent(name: unknown): name is ServerEventName {
  return typeof name === 'string' && (SERVER_EVENTS as readonly string[]).includes(name);
}

type Listener<E extends ServerEventName> = (payload: ServerEvents[E]) => void;

export class EventBus {
  /** username → event → listeners. */
  private readonly users = new Map<string, Map<ServerEventName, Set<Listener<never>>>>();

  constructor(private readonly onListenerError?: (event: string, error: unknown) => void) {}

  /** Listens to one event of one user; returns a function that stops listening. */
  subscribe<E extends ServerEventName>(username: string, event: E, listener: Listener<E>): () => void {
    let events = this.users.get(username);
    if (!events) {
      events = new Map();
      this.users.set(username, events);
    }
    let set = events.get(event);
    if (!set) {
      set = new Set();
      events.set(event, set);
    }
    const entry = listener as Listener<never>;
    set.add(entry);
    return () => {
      if (!set.delete(entry) || set.size > 0) return;
      events.delete(event);
      if (events.size === 0 && this.users.get(username) === events) this.users.delete(username);
    };
  }

  /** Delivers an event to the user's listeners; a listener that throws does not stop the others. */
  publish<E extends ServerEventName>(username: string, event: E, payload: ServerEvents[E]): void {
    const set = this.users.get(username)?.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      if (!set.has(listener)) continue; // removed by an earlier listener
      try {
        (listener as Listener<E>)(payload);
      } catch (err) {
        this.onListenerError?.(event, err);
      }
    }
  }

  /** Listeners of one event of one user (tests, metrics). */
  listenerCount(username: string, event: ServerEventName): number {
    return this.users.get(username)?.get(event)?.size ?? 0;
  }
}
