import { ByteWriter, PsonError, type PsonValue } from '@iotmp/pson';
import {
  DEFAULT_MAX_FRAME_SIZE,
  MAX_STREAM_ID,
  MessageType,
  messageTypeName,
  type ProtocolVersion,
} from '../constants.js';
import { FrameDecoder } from '../decoder.js';
import { type EncodeMessageOptions, legacyFieldOrder, writeMessage } from '../encoder.js';
import { FrameError } from '../errors.js';
import type { DecodedMessage, Message } from '../message.js';
import { type Clock, systemClock, type TimerHandle } from './clock.js';
import {
  AuthError,
  ClosedError,
  RequestError,
  SessionError,
  SessionErrorCode,
  TimeoutError,
} from './errors.js';
import { idleWatchFor } from './idle-watch.js';
import {
  type RegisteredResource,
  type ResourceCall,
  ResourceError,
  ResourceKind,
  type ResourceMatch,
  ResourceRegistry,
  resourcePath,
} from './resources.js';
import type { Transport } from './transport.js';

/** Numeric RESOURCE of START_STREAM that subscribes to server events (spec §11.3). */
export const SUBSCRIBE_EVENT = 8;

/** CONNECT error codes (spec §5.2). */
export const ConnectError = {
  REDIRECT: 1,
  BAD_CREDENTIALS: 2,
  INVALID_KEEPALIVE: 3,
  ENCODING_NOT_SUPPORTED: 4,
} as const;

export interface Credentials {
  username: string;
  deviceId: string;
  credential: string;
}

/** What the server learns from CONNECT. */
export interface ConnectInfo extends Credentials {
  version: ProtocolVersion;
  keepAliveSeconds: number;
  parameters: PsonValue | undefined;
  remoteAddress: string | undefined;
}

/** An answer to a request: OK's PAYLOAD and PARAMETERS (a return code, if any). */
export interface Reply {
  payload: PsonValue | undefined;
  parameters: PsonValue | undefined;
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  parameters?: PsonValue;
}

/** A device → server call (RUN with a numeric resource, spec §11). */
export interface ServerCall {
  code: number;
  identifier: PsonValue | undefined;
  data: PsonValue | undefined;
  /** False for fire-and-forget calls: the answer is dropped. */
  wantsReply: boolean;
}

/** A server-event subscription opened by the peer (START_STREAM on resource 8). */
export interface InboundSubscription {
  readonly streamId: number;
  readonly parameters: PsonValue | undefined;
  /** Sends one event to the subscriber (STREAM_DATA). */
  send(payload: PsonValue): void;
}

export interface SubscriptionHandlers {
  /** Sent with the OK (e.g. the current property value). */
  initial?: PsonValue;
  /** STREAM_DATA from the subscriber (e.g. topic publishes). */
  onData?(payload: PsonValue | undefined): void;
  /** The subscription ended (STOP_STREAM or disconnect). */
  onClose?(): void;
}

/** A stream this side opened on a peer resource. */
export interface RemoteStream {
  readonly streamId: number;
  readonly resource: PsonValue;
  /** Sends STREAM_DATA to the peer on this stream (input for its resource, or a publish). */
  send(payload: PsonValue): void;
  /** STOP_STREAM (answer awaited); resolves once stopped. */
  stop(): Promise<void>;
  readonly closed: boolean;
}

export interface RemoteStreamHandlers {
  onData(payload: PsonValue | undefined, parameters: PsonValue | undefined): void;
  /** The peer stopped the stream, or the session closed. */
  onClose?(reason?: Error): void;
}

export type SessionRole = 'client' | 'server';
export type SessionState = 'idle' | 'connecting' | 'authenticating' | 'open' | 'closed';

export interface SessionOptions {
  role: SessionRole;
  transport: Transport;
  /** Client: the protocol version to speak (default 1). The server reads it from CONNECT. */
  version?: ProtocolVersion;
  clock?: Clock;
  /** The resources this side exposes. */
  resources?: ResourceRegistry;
  /** Client: keep-alive interval sent to the server (default 60 s). Server: used when CONNECT has no `ka`. */
  keepAliveSeconds?: number;
  /** Extra silence tolerated on top of keep-alive × 1.15 before closing (default 5000 ms). */
  keepAliveMarginMs?: number;
  /** Default per-request timeout (default 30 s). */
  requestTimeoutMs?: number;
  /** Requests in flight at once (default 1024). */
  maxPendingRequests?: number;
  /**
   * Server calls of the peer (`onServerCall`) still being answered, past which the engine stops
   * reading from the transport until half of them are done (default 256). A device that sends
   * writes without waiting for answers is slowed down by TCP instead of queueing without bound.
   */
  maxServerCallsInFlight?: number;
  /** Streams open at once, both directions (default 256). */
  maxStreams?: number;
  /** Outgoing bytes waiting for the peer before the connection is closed as a slow reader (default 1 MiB). */
  maxOutgoingBytes?: number;
  /** Largest frame body accepted (default 256 KiB). */
  maxFrameSize?: number;
  /** Largest frame body sent (default 256 KiB); larger outputs answer ERROR. */
  maxSendFrameSize?: number;
  /** Malformed frames tolerated before the connection is closed (default 10). */
  maxInvalidFrames?: number;
  /** Server: time allowed for CONNECT to arrive (default 10 s). */
  connectTimeoutMs?: number;
  /** Server: checks credentials. true → OK; false → ERROR 2 (bad credentials); a number → ERROR with that code. */
  authenticate?: (info: ConnectInfo) => boolean | number | Promise<boolean | number>;
  /** RUN with a numeric resource (device → server calls). Resolve with the answer's payload. */
  onServerCall?: (call: ServerCall) => PsonValue | undefined | Promise<PsonValue | undefined>;
  /** START_STREAM on resource 8. Throw (or reject) to answer ERROR. */
  onSubscribe?: (
    subscription: InboundSubscription,
  ) => SubscriptionHandlers | undefined | Promise<SubscriptionHandlers | undefined>;
  /** STOP_STREAM from the peer for a stream of ours it does not own, e.g. a device ending a session stream. */
  onOpen?: () => void;
  onClose?: (error: SessionError | undefined) => void;
  /** Protocol oddities worth a log line (malformed frame skipped, unexpected answer, …). */
  onWarning?: (message: string, details?: Record<string, unknown>) => void;
}

interface PendingRequest {
  resolve(reply: Reply): void;
  reject(error: Error): void;
  timer: TimerHandle | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  what: string;
}

/** A stream the peer opened on one of our resources. */
interface ServedStream {
  id: number;
  match: ResourceMatch;
  intervalMs: number;
  timer: TimerHandle | undefined;
  parameters: PsonValue | undefined;
}

interface ServedSubscription {
  id: number;
  handlers: SubscriptionHandlers | undefined;
  closed: boolean;
}

interface OpenedStream {
  id: number;
  handlers: RemoteStreamHandlers;
  handle: RemoteStreamImpl;
}

const DEFAULTS = {
  keepAliveSeconds: 60,
  keepAliveMarginMs: 5000,
  requestTimeoutMs: 30_000,
  maxPendingRequests: 1024,
  maxServerCallsInFlight: 256,
  maxStreams: 256,
  maxOutgoingBytes: 1 << 20,
  maxInvalidFrames: 10,
  connectTimeoutMs: 10_000,
} as const;

function isRequestType(type: number): boolean {
  return (
    type === MessageType.RUN ||
    type === MessageType.DESCRIBE ||
    type === MessageType.START_STREAM ||
    type === MessageType.STOP_STREAM ||
    type === MessageType.CONNECT
  );
}

/** `value` if it is not a promise; otherwise the promise. Lets synchronous handlers answer without a microtask hop. */
function isPromise(value: unknown): value is Promise<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

function errorPayload(err: unknown): { error: string } {
  return { error: err instanceof Error ? err.message : String(err) };
}

/**
 * A map that is always empty: what a session reads until it first stores something in one
 * of its maps. An idle device connection thus holds no map tables (about 1 KB saved each).
 */
class EmptyMap<K, V> extends Map<K, V> {
  override set(): this {
    throw new Error('EmptyMap is read-only');
  }
}
const EMPTY: Map<never, never> = new EmptyMap<never, never>();
function emptyMap<K, V>(): Map<K, V> {
  return EMPTY as Map<K, V>;
}

/**
 * Output buffers are lent to sessions while they have frames to send and returned after the
 * flush: thousands of idle sessions hold none.
 */
const writerPool: ByteWriter[] = [];
const WRITER_POOL_MAX = 64;
const WRITER_SIZE = 256;

/** Sessions with frames queued; all of them are written in one microtask per turn. */
let dirtySessions: Session[] = [];
let flushQueued = false;
function flushDirtySessions(): void {
  flushQueued = false;
  const batch = dirtySessions;
  dirtySessions = [];
  for (let i = 0; i < batch.length; i++) (batch[i] as Session).flushQueued();
}

/**
 * One IOTMP connection, either side. It owns stream ids, pending calls, the resources it
 * serves and the streams in both directions, keep-alive and the outgoing buffer; it knows
 * nothing of sockets (a {@link Transport} moves the bytes) or of HTTP.
 *
 * Outgoing frames are appended to one buffer and written once per event-loop turn (a
 * microtask), so answering many requests from one received chunk costs one write.
 */
export class Session {
  readonly role: SessionRole;
  private readonly transport: Transport;
  private readonly clock: Clock;
  private readonly options: SessionOptions;
  private readonly decoder: FrameDecoder;
  /** Frames waiting for this turn's flush; a pooled buffer, held only while there are any. */
  private out: ByteWriter | undefined;
  private encodeOptions: EncodeMessageOptions;
  private _version: ProtocolVersion;
  private _state: SessionState = 'idle';
  private flushScheduled = false;
  private _resources: ResourceRegistry | undefined;

  // Created on first use (see EmptyMap).
  private pending: Map<number, PendingRequest> = emptyMap();
  private served: Map<number, ServedStream> = emptyMap();
  private subscriptions: Map<number, ServedSubscription> = emptyMap();
  private opened: Map<number, OpenedStream> = emptyMap();
  private nextId = 1 + Math.floor(Math.random() * MAX_STREAM_ID);

  private keepAliveSeconds: number;
  private lastReceived = 0;
  /** Client: when the next KEEP_ALIVE is due (checked by the clock's IdleWatch). */
  private nextKeepAliveAt = 0;
  private connectTimer: TimerHandle | undefined;
  private invalidFrames = 0;
  /** Asynchronous server calls not yet answered; reading pauses at the limit. */
  private serverCallsInFlight = 0;
  private readingPaused = false;
  private closeError: SessionError | undefined;
  /** Last input each resource received, for DESCRIBE samples. */
  private lastInput: Map<string, PsonValue> = emptyMap();

  /** Traffic counters. */
  readonly stats = { rxBytes: 0, txBytes: 0, rxMessages: 0, txMessages: 0 };
  /** Set on the server once CONNECT was accepted. */
  connectInfo: ConnectInfo | undefined;

  constructor(options: SessionOptions) {
    this.options = options;
    this.role = options.role;
    this.transport = options.transport;
    this.clock = options.clock ?? systemClock;
    this._resources = options.resources;
    this._version = options.version ?? 1;
    this.keepAliveSeconds = options.keepAliveSeconds ?? DEFAULTS.keepAliveSeconds;
    this.encodeOptions = {
      version: this._version,
      maxFrameSize: options.maxSendFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
    };
    // The session is the decoder's handler (onMessage, onInvalidFrame): no closures per connection.
    this.decoder = new FrameDecoder(this, { maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE });
  }

  /** The resources this side exposes (created on first use: servers rarely have any). */
  get resources(): ResourceRegistry {
    this._resources ??= new ResourceRegistry();
    return this._resources;
  }

  get state(): SessionState {
    return this._state;
  }

  get version(): ProtocolVersion {
    return this._version;
  }

  /** Why the session closed, once it has. */
  get closeReason(): SessionError | undefined {
    return this.closeError;
  }

  /** Bytes queued for sending and not yet taken by the network: watch it to pace bulk streaming. */
  get bufferedAmount(): number {
    return (this.out?.pos ?? 0) + this.transport.bufferedAmount;
  }

  get pendingRequests(): number {
    return this.pending.size;
  }

  get openStreams(): number {
    return this.served.size + this.subscriptions.size + this.opened.size;
  }

  /** Starts reading the transport. The server side then waits for CONNECT. */
  start(): void {
    if (this._state !== 'idle') return;
    this._state = 'connecting';
    this.lastReceived = this.clock.now();
    // The session is the transport's handler too (onData, onClose).
    this.transport.attach(this);
    if (this.role === 'server') {
      this.connectTimer = this.clock.setTimeout(() => {
        this.connectTimer = undefined;
        if (this._state === 'connecting') {
          this.fail(SessionErrorCode.PROTOCOL, 'no CONNECT within the connect timeout');
        }
      }, this.options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Client: authentication

  /** Sends CONNECT and resolves when the server accepts; rejects with AuthError when it refuses. */
  async connect(credentials: Credentials, options?: { timeoutMs?: number }): Promise<void> {
    if (this.role !== 'client') throw new Error('connect() is for the client side');
    if (this._state === 'idle') this.start();
    if (this._state !== 'connecting') throw new ClosedError(`cannot connect in state ${this._state}`);
    this._state = 'authenticating';
    const payload = [credentials.username, credentials.deviceId, credentials.credential];
    // As the reference clients: pv 0 sends PARAMETERS = 1 ("credentials in payload"), pv 1 none.
    // A keep-alive other than the default is announced with the documented `ka` parameter.
    let parameters: PsonValue | undefined;
    if (this._version === 0) parameters = 1;
    else if (this.keepAliveSeconds !== DEFAULTS.keepAliveSeconds) parameters = { ka: this.keepAliveSeconds };
    try {
      await this.request(
        { type: MessageType.CONNECT, parameters, payload },
        { timeoutMs: options?.timeoutMs ?? this.options.requestTimeoutMs },
      );
    } catch (err) {
      if (err instanceof RequestError) {
        const error = new AuthError(
          `server refused the login of ${credentials.username}/${credentials.deviceId}${err.returnCode === ConnectError.BAD_CREDENTIALS ? ': bad credentials' : err.returnCode !== undefined ? ` (code ${err.returnCode})` : ''}`,
          err.returnCode,
        );
        this.closeWith(error);
        throw error;
      }
      if (err instanceof SessionError && err.code === SessionErrorCode.TIMEOUT) this.closeWith(err);
      throw err;
    }
    this.becomeOpen();
  }

  private becomeOpen(): void {
    if (this._state === 'closed') return;
    this._state = 'open';
    this.nextKeepAliveAt = this.clock.now() + this.keepAliveSeconds * 1000;
    idleWatchFor(this.clock).add(this);
    this.options.onOpen?.();
  }

  // ---------------------------------------------------------------------------------------
  // Outgoing calls

  /** Sends a request with a fresh stream id and resolves with the OK, or rejects (RequestError, TimeoutError, …). */
  request(msg: Omit<Message, 'streamId'>, options?: CallOptions): Promise<Reply> {
    return this.requestWithId(msg, options, undefined);
  }

  /** `request`, telling `onId` the stream id chosen before the message is sent. */
  private requestWithId(
    msg: Omit<Message, 'streamId'>,
    options: CallOptions | undefined,
    onId: ((id: number) => void) | undefined,
  ): Promise<Reply> {
    if (this._state === 'closed')
      return Promise.reject(new ClosedError('session is closed', this.closeError));
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.pending.size >= (this.options.maxPendingRequests ?? DEFAULTS.maxPendingRequests)) {
      return Promise.reject(
        new SessionError(
          SessionErrorCode.TOO_MANY_REQUESTS,
          `more than ${this.pending.size} requests in flight`,
        ),
      );
    }
    const id = this.allocateId();
    if (id === 0) {
      return Promise.reject(new SessionError(SessionErrorCode.TOO_MANY_REQUESTS, 'no free stream id'));
    }
    const what = `${messageTypeName(msg.type)} ${describeResource(msg.resource)}`;
    return new Promise<Reply>((resolve, reject) => {
      const entry: PendingRequest = { resolve, reject, timer: undefined, signal, onAbort: undefined, what };
      const timeoutMs = options?.timeoutMs ?? this.options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs;
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        entry.timer = this.clock.setTimeout(() => {
          if (this.pending.get(id) !== entry) return;
          this.settle(id);
          reject(new TimeoutError(`${what}: no answer within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      if (signal) {
        entry.onAbort = () => {
          if (this.pending.get(id) !== entry) return;
          this.settle(id);
          reject(abortError(signal));
        };
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      if (this.pending === EMPTY) this.pending = new Map();
      this.pending.set(id, entry);
      onId?.(id);
      try {
        this.send({ ...msg, streamId: id });
      } catch (err) {
        this.settle(id);
        reject(err);
      }
    });
  }

  /** Removes a pending request and its timer/abort listener. */
  private settle(id: number): PendingRequest | undefined {
    const entry = this.pending.get(id);
    if (!entry) return undefined;
    this.pending.delete(id);
    if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
    if (entry.signal && entry.onAbort) entry.signal.removeEventListener('abort', entry.onAbort);
    return entry;
  }

  /** Runs a peer resource and resolves with its output. */
  async run(resource: PsonValue, input?: PsonValue, options?: CallOptions): Promise<PsonValue | undefined> {
    const reply = await this.request(
      { type: MessageType.RUN, resource, payload: input, parameters: options?.parameters },
      options,
    );
    return reply.payload;
  }

  /** RUN without a stream id: the peer sends no answer. */
  runNoReply(resource: PsonValue, input?: PsonValue, parameters?: PsonValue): void {
    this.assertOpen();
    this.send({ type: MessageType.RUN, resource, payload: input, parameters });
  }

  /** DESCRIBE: all resources (map of name → {fn}) or one ({in, out}). */
  async describe(resource?: string, options?: CallOptions): Promise<PsonValue | undefined> {
    const reply = await this.request(this.resourceMessage(MessageType.DESCRIBE, resource), options);
    return reply.payload;
  }

  /**
   * DESCRIBE and START_STREAM put their resource in field 4, but legacy (pv 0) peers read it
   * from field 3 (spec §14).
   */
  private resourceMessage(type: MessageType, resource: PsonValue | undefined, parameters?: PsonValue) {
    if (resource === undefined) return { type, parameters };
    return this._version === 0 ? { type, payload: resource, parameters } : { type, resource, parameters };
  }

  /**
   * Opens a stream on a peer resource. `intervalMs` > 0 asks for a sample every interval;
   * absent or 0 means the peer sends when it decides (event-driven).
   */
  async openStream(
    resource: PsonValue,
    options: { intervalMs?: number; parameters?: PsonValue } & CallOptions,
    handlers: RemoteStreamHandlers,
  ): Promise<RemoteStream> {
    let parameters = options.parameters;
    if (options.intervalMs !== undefined && options.intervalMs > 0) {
      parameters = { ...(isPlainObject(parameters) ? parameters : {}), interval: options.intervalMs };
    }
    return this.startRemoteStream(
      this.resourceMessage(MessageType.START_STREAM, resource, parameters),
      resource,
      options,
      handlers,
      false,
    );
  }

  /**
   * Subscribes to a server event stream (START_STREAM on resource 8): property updates,
   * topics, device events. The OK's payload, if any, is delivered as the first data.
   */
  subscribe(
    parameters: PsonValue,
    handlers: RemoteStreamHandlers,
    options?: CallOptions,
  ): Promise<RemoteStream> {
    return this.startRemoteStream(
      this.resourceMessage(MessageType.START_STREAM, SUBSCRIBE_EVENT, parameters),
      SUBSCRIBE_EVENT,
      options ?? {},
      handlers,
      true,
    );
  }

  private async startRemoteStream(
    msg: Omit<Message, 'streamId'>,
    resource: PsonValue,
    options: CallOptions,
    handlers: RemoteStreamHandlers,
    deliverInitial: boolean,
  ): Promise<RemoteStream> {
    this.checkStreamLimit();
    let entry: OpenedStream | undefined;
    let reply: Reply;
    try {
      // Registered before START_STREAM leaves: data may follow the OK in the same read.
      reply = await this.requestWithId(msg, options, (id) => {
        entry = { id, handlers, handle: new RemoteStreamImpl(this, id, resource) };
        if (this.opened === EMPTY) this.opened = new Map();
        this.opened.set(id, entry);
      });
    } catch (err) {
      if (entry) this.opened.delete(entry.id);
      throw err;
    }
    const opened = entry as OpenedStream;
    if (deliverInitial && reply.payload !== undefined) handlers.onData(reply.payload, undefined);
    return opened.handle;
  }

  /** A device → server call in the reference Linux layout: RESOURCE = code, PARAMETERS = identifier. */
  async callServer(
    code: number,
    identifier: PsonValue | undefined,
    data?: PsonValue,
    options?: CallOptions,
  ): Promise<PsonValue | undefined> {
    const reply = await this.request(
      { type: MessageType.RUN, resource: code, parameters: identifier, payload: data },
      options,
    );
    return reply.payload;
  }

  /** Fire-and-forget device → server call (no stream id, no answer). */
  callServerNoReply(code: number, identifier: PsonValue | undefined, data?: PsonValue): void {
    this.assertOpen();
    this.send({ type: MessageType.RUN, resource: code, parameters: identifier, payload: data });
  }

  /**
   * Pushes the current output of resource `name` (or `value`, if given) to every stream the
   * peer opened on it. Returns how many streams it went to: 0 means nobody listens, and the
   * output handler was not even called.
   */
  stream(name: string, value?: PsonValue): number | Promise<number> {
    let targets: ServedStream[] | undefined;
    for (const s of this.served.values()) {
      if (s.match.resource.pattern !== name && s.match.path !== name) continue;
      if (targets) targets.push(s);
      else targets = [s];
    }
    if (!targets) return 0;
    if (value !== undefined) {
      for (const s of targets) this.sendStreamData(s.id, value, 2);
      return targets.length;
    }
    const list = targets;
    const pushes = list.map((s) => this.pushOutput(s));
    return pushes.some(isPromise) ? Promise.all(pushes).then(() => list.length) : list.length;
  }

  /**
   * Ends every stream the peer opened on resource `name` from this side (STOP_STREAM without
   * waiting for an answer, as the reference clients do when a session they serve ends).
   * Returns how many were ended.
   */
  endStream(name: string): number {
    let ended = 0;
    for (const s of [...this.served.values()]) {
      if (s.match.resource.pattern !== name && s.match.path !== name) continue;
      this.endServedStream(s);
      this.send({ type: MessageType.STOP_STREAM, streamId: s.id });
      ended++;
    }
    return ended;
  }

  /** Closes: DISCONNECT to the peer, then the transport. Pending calls reject with ClosedError. */
  close(): void {
    if (this._state === 'closed') return;
    if (this._state !== 'idle') {
      try {
        this.send({ type: MessageType.DISCONNECT });
      } catch {
        // nothing more to say to this peer
      }
      this.flush();
    }
    this.closeWith(undefined);
  }

  // ---------------------------------------------------------------------------------------
  // Sending

  private assertOpen(): void {
    if (this._state === 'closed') throw new ClosedError('session is closed', this.closeError);
  }

  /** Appends a frame to the outgoing buffer; one write per event-loop turn. */
  private send(msg: Message): void {
    if (this._state === 'closed') return;
    // Legacy sessions write fields in the legacy client's order: byte-identical frames.
    let out = this.out;
    if (out === undefined) {
      out = writerPool.pop() ?? new ByteWriter(WRITER_SIZE);
      this.out = out;
    }
    writeMessage(
      out,
      msg,
      this._version === 0 ? { ...this.encodeOptions, fieldOrder: legacyFieldOrder(msg) } : this.encodeOptions,
    );
    this.stats.txMessages++;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      dirtySessions.push(this);
      if (!flushQueued) {
        flushQueued = true;
        queueMicrotask(flushDirtySessions);
      }
    }
    const limit = this.options.maxOutgoingBytes ?? DEFAULTS.maxOutgoingBytes;
    if (out.pos + this.transport.bufferedAmount > limit) {
      this.fail(
        SessionErrorCode.SLOW_PEER,
        `peer is not reading: more than ${limit} bytes waiting to be sent`,
      );
    }
  }

  /** @internal The turn's flush (see flushDirtySessions). */
  flushQueued(): void {
    if (this.flushScheduled) this.flush();
  }

  private flush(): void {
    this.flushScheduled = false;
    const out = this.out;
    if (out === undefined) return;
    this.out = undefined;
    const bytes = out.pos > 0 && this._state !== 'closed' ? out.copyFrom(0) : undefined;
    out.pos = 0;
    // Back to the pool, unless a burst grew it (do not keep a large buffer alive).
    if (out.buf.length <= WRITER_SIZE * 16 && writerPool.length < WRITER_POOL_MAX) writerPool.push(out);
    if (bytes === undefined) return;
    this.stats.txBytes += bytes.length;
    this.transport.write(bytes);
  }

  private reply(type: MessageType, streamId: number, payload?: PsonValue, parameters?: PsonValue): void {
    if (!streamId) return; // id-less requests get no answer (spec §6)
    try {
      this.send({ type, streamId, payload, parameters });
    } catch (err) {
      if (err instanceof FrameError || err instanceof PsonError) {
        // The output cannot be sent (too large, not encodable): say so instead.
        this.send({ type: MessageType.ERROR, streamId, payload: errorPayload(err) });
        return;
      }
      throw err;
    }
  }

  private sendStreamData(id: number, payload: PsonValue | undefined, marker: 1 | 2): void {
    try {
      // Legacy peers mark resource input (1) and output (2) in PARAMETERS (spec §10.2).
      this.send({
        type: MessageType.STREAM_DATA,
        streamId: id,
        payload,
        parameters: this._version === 0 ? marker : undefined,
      });
    } catch (err) {
      if (err instanceof FrameError || err instanceof PsonError) {
        this.warn('stream data not sent', { streamId: id, error: err.message });
        return;
      }
      throw err;
    }
  }

  private allocateId(): number {
    for (let tries = 0; tries < MAX_STREAM_ID; tries++) {
      const id = this.nextId;
      this.nextId = id >= MAX_STREAM_ID ? 1 : id + 1;
      if (
        !this.pending.has(id) &&
        !this.served.has(id) &&
        !this.subscriptions.has(id) &&
        !this.opened.has(id)
      ) {
        return id;
      }
    }
    return 0;
  }

  private checkStreamLimit(): void {
    const max = this.options.maxStreams ?? DEFAULTS.maxStreams;
    if (this.openStreams >= max) {
      throw new SessionError(SessionErrorCode.TOO_MANY_STREAMS, `more than ${max} streams open`);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Receiving

  /** @internal Transport handler: bytes received. */
  onData(chunk: Uint8Array): void {
    if (this._state === 'closed') return;
    this.stats.rxBytes += chunk.length;
    this.lastReceived = this.clock.now();
    try {
      this.decoder.push(chunk);
    } catch (err) {
      if (err instanceof FrameError) {
        this.fail(SessionErrorCode.PROTOCOL, `unreadable byte stream: ${err.message}`, err);
        return;
      }
      throw err;
    }
  }

  /** @internal Frame decoder handler: a frame that could not be read was skipped. */
  onInvalidFrame(err: FrameError): void {
    this.warn('malformed frame skipped', {
      code: err.code,
      type: err.messageType,
      streamId: err.streamId,
      error: err.message,
    });
    if (err.code === 'IOTMP_ERR_UNKNOWN_TYPE') return; // ignored, as the spec requires
    if (this._state !== 'open') {
      this.fail(SessionErrorCode.PROTOCOL, `malformed frame before login: ${err.message}`, err);
      return;
    }
    if (err.streamId && err.messageType !== undefined && isRequestType(err.messageType)) {
      this.reply(MessageType.ERROR, err.streamId, { error: err.message }, 400);
    }
    if (++this.invalidFrames > (this.options.maxInvalidFrames ?? DEFAULTS.maxInvalidFrames)) {
      this.fail(SessionErrorCode.PROTOCOL, `too many malformed frames (${this.invalidFrames})`, err);
    }
  }

  /** @internal Frame decoder handler: one decoded message. */
  onMessage(msg: DecodedMessage): void {
    if (this._state === 'closed') return;
    this.stats.rxMessages++;
    if (this.role === 'server' && this._state !== 'open') {
      this.dispatchBeforeLogin(msg);
      return;
    }
    switch (msg.type) {
      case MessageType.OK:
      case MessageType.ERROR:
        this.onAnswer(msg);
        return;
      case MessageType.KEEP_ALIVE:
        if (this.role === 'server') this.send({ type: MessageType.KEEP_ALIVE });
        return;
      case MessageType.RUN:
        this.onRun(msg);
        return;
      case MessageType.DESCRIBE:
        this.onDescribe(msg);
        return;
      case MessageType.START_STREAM:
        this.onStartStream(msg);
        return;
      case MessageType.STOP_STREAM:
        this.onStopStream(msg);
        return;
      case MessageType.STREAM_DATA:
        this.onStreamData(msg);
        return;
      case MessageType.DISCONNECT:
        this.closeWith(new ClosedError('peer sent DISCONNECT'));
        return;
      case MessageType.CONNECT:
        // Already logged in: refuse a second login on the same connection.
        this.reply(MessageType.ERROR, msg.streamId ?? 0, { error: 'already connected' });
        return;
    }
  }

  private onAnswer(msg: DecodedMessage): void {
    const id = msg.streamId;
    if (!id) return; // answers to id-less requests (the references send them with id 0)
    const entry = this.settle(id);
    if (!entry) {
      this.warn(`${messageTypeName(msg.type)} for unknown stream id ignored`, { streamId: id });
      return;
    }
    if (msg.type === MessageType.OK) {
      entry.resolve({ payload: msg.payload, parameters: msg.parameters });
    } else {
      const detail = errorText(msg.payload);
      entry.reject(
        new RequestError(
          `${entry.what} failed${typeof msg.parameters === 'number' ? ` (${msg.parameters})` : ''}${detail ? `: ${detail}` : ''}`,
          msg.parameters,
          msg.payload,
        ),
      );
    }
  }

  // --- server side, before login

  private dispatchBeforeLogin(msg: DecodedMessage): void {
    if (this._state === 'authenticating') {
      this.fail(
        SessionErrorCode.PROTOCOL,
        `${messageTypeName(msg.type)} received while the login is checked`,
      );
      return;
    }
    if (msg.type !== MessageType.CONNECT) {
      this.fail(SessionErrorCode.PROTOCOL, `${messageTypeName(msg.type)} received before CONNECT`);
      return;
    }
    if (this.connectTimer !== undefined) {
      this.clock.clearTimeout(this.connectTimer);
      this.connectTimer = undefined;
    }
    this.onConnect(msg);
  }

  private onConnect(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    const params = msg.parameters;
    // Version: PARAMETERS.pv if given, else the wire type of the PSON fields (spec §4).
    let version: ProtocolVersion = msg.psonVersion ?? 1;
    if (isPlainObject(params) && (params.pv === 0 || params.pv === 1)) version = params.pv;
    this.setVersion(version);
    const refuse = (code: number | undefined, why: string) => {
      this.reply(MessageType.ERROR, sid || 0, undefined, code);
      if (!sid) this.send({ type: MessageType.ERROR, parameters: code });
      this.fail(SessionErrorCode.AUTH_FAILED, why);
    };
    const creds = msg.payload;
    if (
      !Array.isArray(creds) ||
      creds.length !== 3 ||
      !creds.every((c) => typeof c === 'string' && c.length > 0 && c.length <= 256)
    ) {
      refuse(ConnectError.BAD_CREDENTIALS, 'CONNECT without [username, device, credential]');
      return;
    }
    let ka = this.options.keepAliveSeconds ?? DEFAULTS.keepAliveSeconds;
    if (isPlainObject(params) && params.ka !== undefined) {
      if (
        typeof params.ka !== 'number' ||
        !Number.isInteger(params.ka) ||
        params.ka < 1 ||
        params.ka > 1800
      ) {
        refuse(ConnectError.INVALID_KEEPALIVE, `invalid keep-alive ${String(params.ka)}`);
        return;
      }
      ka = params.ka;
    }
    this.keepAliveSeconds = ka;
    const [username, deviceId, credential] = creds as [string, string, string];
    const info: ConnectInfo = {
      username,
      deviceId,
      credential,
      version,
      keepAliveSeconds: ka,
      parameters: params,
      remoteAddress: this.transport.remoteAddress,
    };
    if (!this.options.authenticate) {
      refuse(undefined, 'no authenticator configured');
      return;
    }
    this._state = 'authenticating';
    const decide = (result: boolean | number) => {
      if (this._state !== 'authenticating') return;
      if (result === true) {
        this.connectInfo = info;
        // OK must be the very first message after CONNECT (spec Appendix C).
        this.send({ type: MessageType.OK, streamId: sid || undefined });
        this.becomeOpen();
      } else {
        refuse(
          result === false ? ConnectError.BAD_CREDENTIALS : result,
          `login of ${username}/${deviceId} refused`,
        );
      }
    };
    try {
      const result = this.options.authenticate(info);
      if (isPromise(result)) {
        result.then(decide, (err: unknown) => {
          this.warn('authenticator failed', { error: String(err) });
          if (this._state === 'authenticating') refuse(undefined, 'authenticator failed');
        });
      } else {
        decide(result);
      }
    } catch (err) {
      this.warn('authenticator failed', { error: String(err) });
      refuse(undefined, 'authenticator failed');
    }
  }

  private setVersion(version: ProtocolVersion): void {
    this._version = version;
    this.encodeOptions = { ...this.encodeOptions, version };
  }

  // --- requests from the peer

  private onRun(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    const resource = msg.resource;
    // Server resources: a numeric code, in either layout (spec §11.2).
    let code: number | undefined;
    let identifier: PsonValue | undefined;
    if (typeof resource === 'number') {
      code = resource;
      identifier = msg.parameters;
    } else if (typeof msg.parameters === 'number' && typeof resource === 'string') {
      code = msg.parameters;
      identifier = resource;
    }
    if (code !== undefined && this.options.onServerCall) {
      this.serveServerCall(sid, { code, identifier, data: msg.payload, wantsReply: sid !== 0 });
      return;
    }
    const path = resourcePath(resource);
    const match = path === undefined ? undefined : this.resources.match(path);
    if (!match) {
      // Unknown resource: ERROR without payload, as the reference clients answer.
      this.reply(MessageType.ERROR, sid);
      return;
    }
    this.answerResource(sid, match, msg.payload, msg.parameters);
  }

  private serveServerCall(sid: number, call: ServerCall): void {
    const onError = (err: unknown) => {
      const code = err instanceof ResourceError ? err.code : undefined;
      this.reply(MessageType.ERROR, sid, errorPayload(err), code);
    };
    try {
      const result = (this.options as Required<Pick<SessionOptions, 'onServerCall'>>).onServerCall(call);
      if (isPromise(result)) {
        this.serverCallStarted();
        result.then(
          (payload) => {
            this.serverCallDone();
            this.reply(MessageType.OK, sid, payload);
          },
          (err) => {
            this.serverCallDone();
            onError(err);
          },
        );
      } else {
        this.reply(MessageType.OK, sid, result);
      }
    } catch (err) {
      onError(err);
    }
  }

  private serverCallStarted(): void {
    const max = this.options.maxServerCallsInFlight ?? DEFAULTS.maxServerCallsInFlight;
    if (++this.serverCallsInFlight >= max && !this.readingPaused && this.transport.pause) {
      this.readingPaused = true;
      this.transport.pause();
    }
  }

  private serverCallDone(): void {
    const max = this.options.maxServerCallsInFlight ?? DEFAULTS.maxServerCallsInFlight;
    if (--this.serverCallsInFlight <= max >> 1 && this.readingPaused && this._state !== 'closed') {
      this.readingPaused = false;
      this.transport.resume?.();
    }
  }

  /** Runs a resource handler and answers OK with its output, or ERROR. */
  private answerResource(
    sid: number,
    match: ResourceMatch,
    input: PsonValue | undefined,
    parameters: PsonValue | undefined,
  ): void {
    const call: ResourceCall = { path: match.path, params: match.params, parameters };
    const done = (output: unknown) => {
      this.reply(MessageType.OK, sid, output as PsonValue | undefined, call.returnCode);
      this.echoAfterInput(match);
    };
    const failed = (err: unknown) => {
      const code = err instanceof ResourceError ? err.code : undefined;
      this.reply(MessageType.ERROR, sid, errorPayload(err), code);
    };
    try {
      const result = this.invoke(match.resource, input, call);
      if (isPromise(result)) result.then(done, failed);
      else done(result);
    } catch (err) {
      failed(err);
    }
  }

  /** Calls a resource's handlers; returns the output (or a promise of it). */
  private invoke(resource: RegisteredResource, input: PsonValue | undefined, call: ResourceCall): unknown {
    const def = resource.definition;
    if (input !== undefined && def.input !== undefined) {
      if (this.lastInput === EMPTY) this.lastInput = new Map();
      this.lastInput.set(resource.pattern, input);
    }
    if (def.run) return def.run(call);
    if (typeof def.input === 'function') {
      const inputDone = def.input(input, call);
      if (def.output) {
        const output = def.output;
        return isPromise(inputDone) ? inputDone.then(() => output(input, call)) : output(input, call);
      }
      return isPromise(inputDone) ? inputDone.then(() => undefined) : undefined;
    }
    if (def.output) return def.output(input, call);
    return undefined;
  }

  private onDescribe(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    const target = this.streamResourceOf(msg);
    if (target === undefined) {
      const api: Record<string, PsonValue> = {};
      for (const r of this.resources.all()) api[r.pattern] = { fn: r.kind };
      this.reply(MessageType.OK, sid, api);
      return;
    }
    const path = resourcePath(target);
    const match = path === undefined ? undefined : this.resources.match(path);
    if (!match) {
      this.reply(MessageType.ERROR, sid);
      return;
    }
    const def = match.resource.definition;
    const description: Record<string, PsonValue> = {};
    const sampleIn = def.describe?.in ?? this.lastInput.get(match.resource.pattern);
    if (sampleIn !== undefined) description.in = sampleIn;
    if (def.describe?.out !== undefined) {
      description.out = def.describe.out;
    } else if (
      match.resource.kind === ResourceKind.OUTPUT &&
      Object.keys(match.params).length === 0 &&
      def.output
    ) {
      // A sensor's current value is its example output (reading is side-effect free).
      const call: ResourceCall = { path: match.path, params: match.params, parameters: undefined };
      try {
        const out = def.output(undefined, call);
        if (isPromise(out)) {
          out.then(
            (v) =>
              this.reply(MessageType.OK, sid, {
                ...description,
                ...(v === undefined ? {} : { out: v as PsonValue }),
              }),
            () => this.reply(MessageType.OK, sid, description),
          );
          return;
        }
        if (out !== undefined) description.out = out as PsonValue;
      } catch {
        // no sample
      }
    }
    this.reply(MessageType.OK, sid, description);
  }

  /** The resource a DESCRIBE/START_STREAM names: field 4, or field 3 from legacy peers (spec §14). */
  private streamResourceOf(msg: DecodedMessage): PsonValue | undefined {
    if (msg.resource !== undefined) return msg.resource;
    const p = msg.payload;
    if (typeof p === 'string' || typeof p === 'number' || Array.isArray(p)) return p;
    return undefined;
  }

  private onStartStream(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    if (!sid) return; // a stream needs an id
    const resource = this.streamResourceOf(msg);
    if (resource === SUBSCRIBE_EVENT && this.options.onSubscribe) {
      this.serveSubscription(sid, msg.parameters);
      return;
    }
    const path = resourcePath(resource);
    const match = path === undefined ? undefined : this.resources.match(path);
    if (!match) {
      this.reply(MessageType.ERROR, sid);
      return;
    }
    // A repeated START_STREAM for the same resource replaces interval and id (spec §10.1).
    for (const s of this.served.values()) {
      if (s.match.path === match.path) this.endServedStream(s);
    }
    if (this.opened.has(sid) || this.subscriptions.has(sid) || this.pending.has(sid)) {
      this.reply(MessageType.ERROR, sid, { error: 'stream id in use' }, 409);
      return;
    }
    if (this.openStreams >= (this.options.maxStreams ?? DEFAULTS.maxStreams)) {
      this.reply(MessageType.ERROR, sid, { error: 'too many streams' }, 429);
      return;
    }
    const intervalMs = streamInterval(msg.parameters);
    const stream: ServedStream = { id: sid, match, intervalMs, timer: undefined, parameters: msg.parameters };
    if (this.served === EMPTY) this.served = new Map();
    this.served.set(sid, stream);
    this.reply(MessageType.OK, sid);
    if (match.resource.definition.streamEcho !== false) void this.pushOutput(stream);
    if (intervalMs > 0) this.scheduleSample(stream);
  }

  private scheduleSample(stream: ServedStream): void {
    stream.timer = this.clock.setTimeout(() => {
      stream.timer = undefined;
      if (this.served.get(stream.id) !== stream) return;
      const pushed = this.pushOutput(stream);
      const next = () => {
        if (this.served.get(stream.id) === stream) this.scheduleSample(stream);
      };
      if (isPromise(pushed)) pushed.then(next, next);
      else next();
    }, stream.intervalMs);
  }

  /** Sends the resource's current output on a served stream. */
  private pushOutput(stream: ServedStream): void | Promise<void> {
    const def = stream.match.resource.definition;
    if (!def.output) return;
    const call: ResourceCall = {
      path: stream.match.path,
      params: stream.match.params,
      parameters: stream.parameters,
    };
    const send = (value: unknown) => {
      if (this.served.get(stream.id) === stream && value !== undefined)
        this.sendStreamData(stream.id, value as PsonValue, 2);
    };
    const failed = (err: unknown) =>
      this.warn('stream output failed', { resource: stream.match.path, error: String(err) });
    try {
      const out = def.output(undefined, call);
      if (isPromise(out)) return out.then(send, failed);
      send(out);
    } catch (err) {
      failed(err);
    }
  }

  /** After input on a resource with streams open, stream its new state (spec §10.4). */
  private echoAfterInput(match: ResourceMatch): void {
    if (this.served.size === 0) return;
    const def = match.resource.definition;
    if (def.streamEcho === false || !def.output || def.input === undefined) return;
    for (const s of this.served.values()) {
      if (s.match.path === match.path) void this.pushOutput(s);
    }
  }

  private serveSubscription(sid: number, parameters: PsonValue | undefined): void {
    if (
      this.served.has(sid) ||
      this.opened.has(sid) ||
      this.subscriptions.has(sid) ||
      this.pending.has(sid)
    ) {
      this.reply(MessageType.ERROR, sid, { error: 'stream id in use' }, 409);
      return;
    }
    if (this.openStreams >= (this.options.maxStreams ?? DEFAULTS.maxStreams)) {
      this.reply(MessageType.ERROR, sid, { error: 'too many streams' }, 429);
      return;
    }
    const entry: ServedSubscription = { id: sid, handlers: undefined, closed: false };
    if (this.subscriptions === EMPTY) this.subscriptions = new Map();
    this.subscriptions.set(sid, entry);
    const subscription: InboundSubscription = {
      streamId: sid,
      parameters,
      send: (payload) => {
        if (!entry.closed && this._state === 'open') {
          this.send({ type: MessageType.STREAM_DATA, streamId: sid, payload });
        }
      },
    };
    const accept = (handlers: SubscriptionHandlers | undefined) => {
      if (entry.closed) {
        handlers?.onClose?.();
        return;
      }
      entry.handlers = handlers;
      this.reply(MessageType.OK, sid, handlers?.initial);
    };
    const reject = (err: unknown) => {
      this.subscriptions.delete(sid);
      entry.closed = true;
      const code = err instanceof ResourceError ? err.code : undefined;
      this.reply(MessageType.ERROR, sid, errorPayload(err), code);
    };
    try {
      const result = (this.options.onSubscribe as NonNullable<SessionOptions['onSubscribe']>)(subscription);
      if (isPromise(result)) result.then(accept, reject);
      else accept(result);
    } catch (err) {
      reject(err);
    }
  }

  private onStopStream(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    if (!sid) return;
    const served = this.served.get(sid);
    if (served) {
      this.endServedStream(served);
      this.reply(MessageType.OK, sid);
      return;
    }
    const sub = this.subscriptions.get(sid);
    if (sub) {
      this.endSubscription(sub);
      this.reply(MessageType.OK, sid);
      return;
    }
    const opened = this.opened.get(sid);
    if (opened) {
      // The peer ended a stream we opened (e.g. a device ending a session stream).
      this.opened.delete(sid);
      opened.handle.markClosed();
      opened.handlers.onClose?.();
      this.reply(MessageType.OK, sid);
      return;
    }
    this.reply(MessageType.ERROR, sid, undefined, 404);
  }

  private onStreamData(msg: DecodedMessage): void {
    const sid = msg.streamId ?? 0;
    const opened = this.opened.get(sid);
    if (opened) {
      opened.handlers.onData(msg.payload, msg.parameters);
      return;
    }
    const served = this.served.get(sid);
    if (served) {
      // Input for the streamed resource: run it; its new state is echoed.
      const def = served.match.resource.definition;
      if (def.input === undefined && !def.run) return;
      const call: ResourceCall = {
        path: served.match.path,
        params: served.match.params,
        parameters: msg.parameters,
      };
      try {
        const result = this.invoke(served.match.resource, msg.payload, call);
        const after = () => this.echoAfterInput(served.match);
        if (isPromise(result))
          result.then(after, (err) => this.warn('stream input failed', { error: String(err) }));
        else after();
      } catch (err) {
        this.warn('stream input failed', { resource: served.match.path, error: String(err) });
      }
      return;
    }
    const sub = this.subscriptions.get(sid);
    if (sub) {
      sub.handlers?.onData?.(msg.payload);
      return;
    }
    // Unknown stream: dropped silently, as the references do.
  }

  private endServedStream(stream: ServedStream): void {
    this.served.delete(stream.id);
    if (stream.timer !== undefined) this.clock.clearTimeout(stream.timer);
  }

  private endSubscription(sub: ServedSubscription): void {
    this.subscriptions.delete(sub.id);
    if (sub.closed) return;
    sub.closed = true;
    sub.handlers?.onClose?.();
  }

  /** @internal Used by RemoteStream. */
  sendOnStream(id: number, payload: PsonValue): void {
    this.assertOpen();
    this.send({ type: MessageType.STREAM_DATA, streamId: id, payload });
  }

  /** @internal Used by RemoteStream. */
  async stopOpenedStream(id: number): Promise<void> {
    const entry = this.opened.get(id);
    if (!entry) return;
    this.opened.delete(id);
    entry.handle.markClosed();
    if (this._state !== 'open') return;
    // STOP_STREAM reuses the stream's id, so it is sent directly rather than via request().
    await new Promise<void>((resolve) => {
      const timeoutMs = this.options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs;
      const pendingEntry: PendingRequest = {
        resolve: () => resolve(),
        reject: () => resolve(),
        timer: this.clock.setTimeout(() => {
          this.settle(id);
          resolve();
        }, timeoutMs),
        signal: undefined,
        onAbort: undefined,
        what: 'STOP_STREAM',
      };
      if (this.pending === EMPTY) this.pending = new Map();
      this.pending.set(id, pendingEntry);
      this.send({ type: MessageType.STOP_STREAM, streamId: id });
    });
  }

  // ---------------------------------------------------------------------------------------
  // Keep-alive and closing

  private idleLimitMs(): number {
    return this.keepAliveSeconds * 1150 + (this.options.keepAliveMarginMs ?? DEFAULTS.keepAliveMarginMs);
  }

  /** @internal Keep-alive deadlines, about once a second (IdleWatch). */
  idleTick(now: number): void {
    if (this._state !== 'open') return;
    const limit = this.idleLimitMs();
    if (now - this.lastReceived >= limit) {
      this.fail(SessionErrorCode.KEEPALIVE_TIMEOUT, `nothing received for ${Math.round(limit / 1000)} s`);
      return;
    }
    if (this.role === 'client' && now >= this.nextKeepAliveAt) {
      this.nextKeepAliveAt = now + this.keepAliveSeconds * 1000;
      this.send({ type: MessageType.KEEP_ALIVE });
    }
  }

  private fail(code: SessionErrorCode, message: string, cause?: unknown): void {
    if (this._state === 'closed') return;
    const error = new SessionError(code, message, cause === undefined ? undefined : { cause });
    this.warn('closing connection', { code, reason: message });
    if (code !== SessionErrorCode.SLOW_PEER) {
      try {
        this.send({ type: MessageType.DISCONNECT });
      } catch {
        // ignore
      }
      this.flush();
    }
    this.closeWith(error);
  }

  /** @internal Transport handler: the connection is gone. */
  onClose(error?: Error): void {
    if (this._state === 'closed') return;
    this.closeWith(
      new ClosedError(error ? `connection lost: ${error.message}` : 'connection closed by peer', error),
    );
  }

  private closeWith(error: SessionError | undefined): void {
    if (this._state === 'closed') return;
    // Flush what is queued (an ERROR answering CONNECT, a DISCONNECT) before the socket goes.
    this.flush();
    this._state = 'closed';
    this.closeError = error;
    idleWatchFor(this.clock).delete(this);
    if (this.connectTimer !== undefined) this.clock.clearTimeout(this.connectTimer);
    const closed = new ClosedError(error ? `session closed: ${error.message}` : 'session closed', error);
    for (const id of [...this.pending.keys()]) this.settle(id)?.reject(closed);
    for (const s of this.served.values()) if (s.timer !== undefined) this.clock.clearTimeout(s.timer);
    this.served.clear();
    for (const sub of [...this.subscriptions.values()]) this.endSubscription(sub);
    for (const o of [...this.opened.values()]) {
      o.handle.markClosed();
      o.handlers.onClose?.(closed);
    }
    this.opened.clear();
    if (error && error.code === SessionErrorCode.SLOW_PEER) this.transport.destroy();
    else this.transport.close();
    this.options.onClose?.(error);
  }

  private warn(message: string, details?: Record<string, unknown>): void {
    this.options.onWarning?.(message, details);
  }
}

class RemoteStreamImpl implements RemoteStream {
  private _closed = false;
  constructor(
    private readonly session: Session,
    readonly streamId: number,
    readonly resource: PsonValue,
  ) {}

  get closed(): boolean {
    return this._closed;
  }

  markClosed(): void {
    this._closed = true;
  }

  send(payload: PsonValue): void {
    if (this._closed) throw new ClosedError('stream is closed');
    this.session.sendOnStream(this.streamId, payload);
  }

  stop(): Promise<void> {
    return this.session.stopOpenedStream(this.streamId);
  }
}

function isPlainObject(v: unknown): v is Record<string, PsonValue> {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    !(v instanceof Uint8Array) &&
    !(v instanceof Map)
  );
}

/** START_STREAM interval in ms: `{"interval": ms}` or a bare number (spec §15 #6). */
function streamInterval(parameters: PsonValue | undefined): number {
  const raw =
    typeof parameters === 'number' ? parameters : isPlainObject(parameters) ? parameters.interval : undefined;
  if (typeof raw !== 'number' || !Number.isFinite(raw) || raw <= 0) return 0;
  return Math.max(10, Math.min(raw, 86_400_000)); // floor keeps a hostile 1 ms from becoming a busy loop
}

function describeResource(resource: PsonValue | undefined): string {
  if (resource === undefined) return '';
  if (typeof resource === 'string') return resource;
  if (typeof resource === 'number') return `#${resource}`;
  return resourcePath(resource) ?? '';
}

function errorText(payload: PsonValue | undefined): string | undefined {
  if (typeof payload === 'string') return payload;
  if (isPlainObject(payload)) {
    const m = payload.error ?? payload.message;
    if (typeof m === 'string') return m;
  }
  return undefined;
}

function abortError(signal: AbortSignal): SessionError {
  return new SessionError(SessionErrorCode.ABORTED, 'call aborted', { cause: signal.reason });
}
