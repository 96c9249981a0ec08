import type { PsonValue } from '@iotmp/pson';

/*
 * MQTT-style topics inside the server: per-user publish/subscribe between devices and the
 * events WebSocket (and, later, an MQTT bridge), with the topic rules of MQTT 3.1.1 §4.7 and
 * retained messages. Delivery is at most once, in order per publisher, whatever the QoS
 * asked for: nothing is queued for a subscriber that is not connected.
 */

/** Longest topic name or filter accepted (characters). MQTT allows 65535 bytes; devices never need that. */
export const MAX_TOPIC_LENGTH = 1024;
/** Levels in a topic or filter. */
export const MAX_TOPIC_LEVELS = 64;

/** A message as subscribers receive it: the reference client reads `payload["payload"]`. */
export interface TopicMessage {
  topic: string;
  payload: PsonValue;
}

/** Why a topic name or filter is refused, or undefined when it is valid. */
function checkCommon(topic: unknown, what: string): string | undefined {
  if (typeof topic !== 'string') return `${what} must be a string`;
  if (topic.length === 0) return `${what} must not be empty`;
  if (topic.length > MAX_TOPIC_LENGTH) return `${what} is longer than ${MAX_TOPIC_LENGTH} characters`;
  if (topic.includes('\u0000')) return `${what} must not contain the null character`;
  if (topic.split('/').length > MAX_TOPIC_LEVELS) return `${what} has more than ${MAX_TOPIC_LEVELS} levels`;
  return undefined;
}

/** A topic to publish to: no wildcards (MQTT 3.1.1 §4.7.1). Returns what is wrong, or undefined. */
export function topicNameError(topic: unknown): string | undefined {
  const common = checkCommon(topic, 'topic');
  if (common) return common;
  if (/[+#]/.test(topic as string)) return 'a topic to publish to must not contain the wildcards + or #';
  return undefined;
}

/**
 * A subscription filter: `+` stands alone in its level, `#` stands alone in the last level
 * (MQTT 3.1.1 §4.7.1). Returns what is wrong, or undefined.
 */
export function topicFilterError(filter: unknown): string | undefined {
  const common = checkCommon(filter, 'topic filter');
  if (common) return common;
  const levels = (filter as string).split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i] as string;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1))
      return 'the wildcard # must be alone in the last level of a topic filter (e.g. a/b/#)';
    if (level.includes('+') && level !== '+')
      return 'the wildcard + must be alone in its level of a topic filter (e.g. a/+/c)';
  }
  return undefined;
}

/**
 * Does a (valid) filter match a (valid) topic name? `+` matches one level, `#` any number of
 * levels including none (`a/#` matches `a`); filters starting with a wildcard do not match
 * topics starting with `$` (MQTT 3.1.1 §4.7.2).
 */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return true;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** An empty payload (absent, null, "" or no bytes): published retained, it clears the retained message. */
export function isEmptyPayload(payload: PsonValue | undefined): boolean {
  return (
    payload === undefined ||
    payload === null ||
    payload === '' ||
    (payload instanceof Uint8Array && payload.length === 0)
  );
}

export interface TopicBrokerOptions {
  /** Retained messages kept per user (default 1000). */
  maxRetainedPerUser?: number;
  /** Bytes of retained payloads kept per user, as measured by `sizeOf` (default 4 MiB). */
  maxRetainedBytesPerUser?: number;
  /** Size of a payload in bytes (default: its JSON length, binary counted as-is). */
  sizeOf?: (payload: PsonValue) => number;
  /** A retained message could not be kept (over a limit), or a subscriber threw. */
  onWarning?: (message: string, details: Record<string, unknown>) => void;
}

type TopicListener = (message: TopicMessage) => void;

interface TopicSubscription {
  filter: string;
  listener: TopicListener;
}

interface UserTopics {
  subscriptions: Set<TopicSubscription>;
  retained: Map<string, { payload: PsonValue; size: number }>;
  retainedBytes: number;
}

/** Rough payload size: bytes for binary, JSON length otherwise. */
function defaultSizeOf(payload: PsonValue): number {
  if (payload instanceof Uint8Array) return payload.length;
  try {
    return JSON.stringify(payload, (_k, v: unknown) =>
      typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? `${v.length}` : v,
    ).length;
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}

/**
 * The topics of every user. Subscriptions are matched by a scan of the user's own
 * subscriptions (one user's traffic never touches another user's subscribers).
 */
export class TopicBroker {
  private readonly users = new Map<string, UserTopics>();
  private readonly maxRetained: number;
  private readonly maxRetainedBytes: number;
  private readonly sizeOf: (payload: PsonValue) => number;

  constructor(private readonly options: TopicBrokerOptions = {}) {
    this.maxRetained = options.maxRetainedPerUser ?? 1000;
    this.maxRetainedBytes = options.maxRetainedBytesPerUser ?? 4 << 20;
    this.sizeOf = options.sizeOf ?? defaultSizeOf;
  }

  private user(username: string): UserTopics {
    let u = this.users.get(username);
    if (!u) {
      u = { subscriptions: new Set(), retained: new Map(), retainedBytes: 0 };
      this.users.set(username, u);
    }
    return u;
  }

  private release(username: string, u: UserTopics): void {
    if (u.subscriptions.size === 0 && u.retained.size === 0) this.users.delete(username);
  }

  /**
   * Delivers `payload` to every subscriber of `username` whose filter matches `topic` (a
   * valid topic name). Retained: stored for future subscribers (an empty payload clears it).
   * Returns the number of subscribers reached.
   */
  publish(username: string, topic: string, payload: PsonValue | undefined, retained = false): number {
    const u = this.users.get(username) ?? (retained ? this.user(username) : undefined);
    if (!u) return 0;
    if (retained) this.retain(username, u, topic, payload);
    const message: TopicMessage = { topic, payload: payload ?? null };
    let reached = 0;
    for (const s of [...u.subscriptions]) {
      if (!u.subscriptions.has(s) || !topicMatches(s.filter, topic)) continue;
      reached++;
      try {
        s.listener(message);
      } catch (err) {
        this.options.onWarning?.('topic subscriber failed', { topic, error: String(err) });
      }
    }
    this.release(username, u);
    return reached;
  }

  private retain(username: string, u: UserTopics, topic: string, payload: PsonValue | undefined): void {
    const old = u.retained.get(topic);
    if (old) {
      u.retained.delete(topic);
      u.retainedBytes -= old.size;
    }
    if (isEmptyPayload(payload)) return;
    const size = this.sizeOf(payload as PsonValue);
    if (u.retained.size >= this.maxRetained || u.retainedBytes + size > this.maxRetainedBytes) {
      this.options.onWarning?.('retained message not kept: over the per-user limit', {
        username,
        topic,
        size,
        retained: u.retained.size,
        retainedBytes: u.retainedBytes,
      });
      return;
    }
    u.retained.set(topic, { payload: payload as PsonValue, size });
    u.retainedBytes += size;
  }

  /**
   * Subscribes `listener` to a (valid) filter. The retained messages matching it are
   * returned (the caller sends them first, then new messages follow through `listener`).
   */
  subscribe(
    username: string,
    filter: string,
    listener: TopicListener,
  ): { retained: TopicMessage[]; unsubscribe: () => void } {
    const u = this.user(username);
    const sub: TopicSubscription = { filter, listener };
    u.subscriptions.add(sub);
    const retained: TopicMessage[] = [];
    for (const [topic, r] of u.retained) {
      if (topicMatches(filter, topic)) retained.push({ topic, payload: r.payload });
    }
    return {
      retained,
      unsubscribe: () => {
        if (u.subscriptions.delete(sub)) this.release(username, u);
      },
    };
  }

  /** The retained message of a topic, if any. */
  retainedOf(username: string, topic: string): PsonValue | undefined {
    return this.users.get(username)?.retained.get(topic)?.payload;
  }

  /** Subscriptions of a user (for tests and metrics). */
  subscriptionCount(username: string): number {
    return this.users.get(username)?.subscriptions.size ?? 0;
  }
}
