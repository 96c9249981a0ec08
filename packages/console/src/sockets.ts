/**
 * The WebSocket API: the events socket (`/v2/users/{u}/events`) with reconnects, and one
 * resource stream (`/v3/users/{u}/devices/{d}/resources/{res}?interval=s`).
 * Server frames: `{event|resource, signal: start|stop|data|error, payload}`.
 */
import type { Api } from './api.js';
import { encodePath } from './dom.js';

export interface ServerFrame {
  event?: string;
  resource?: string;
  signal: 'start' | 'stop' | 'data' | 'error';
  payload?: unknown;
}

export interface EventSubscription {
  event: 'device_state_change' | 'device_property_update';
  filters?: { device?: string; property?: string };
}

export type SocketState = 'connecting' | 'live' | 'retrying' | 'closed';

function parse(data: unknown): ServerFrame | undefined {
  if (typeof data !== 'string') return undefined;
  try {
    const frame = JSON.parse(data) as ServerFrame;
    return typeof frame === 'object' && frame !== null && typeof frame.signal === 'string'
      ? frame
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Server events for the logged-in user, re-opened with backoff (1 s … 15 s) until `signal`
 * aborts. `onLive` runs each time every subscription is confirmed: whoever shows state then
 * reloads it, since events may have been missed while the socket was down.
 */
export function openEvents(
  api: Api,
  subscriptions: EventSubscription[],
  handlers: {
    onEvent(event: string, payload: unknown): void;
    onState?(state: SocketState): void;
    onLive?(): void;
  },
  signal: AbortSignal,
): void {
  let delay = 1000;
  let failures = 0;
  let socket: WebSocket | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const retry = () => {
    if (signal.aborted) return;
    handlers.onState?.('retrying');
    failures++;
    timer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 15_000);
  };

  const connect = async () => {
    if (signal.aborted) return;
    handlers.onState?.('connecting');
    let url: string;
    try {
      // After failed attempts, an API call finds out whether the session is still valid
      // (it refreshes the token or sends the user to the login page).
      if (failures >= 2) await api.get(`${api.userPath(1)}/devices`, { query: { count: 1 } });
      url = await api.socketUrl(`${api.userPath(2)}/events`);
    } catch {
      retry();
      return;
    }
    if (signal.aborted) return;
    const ws = new WebSocket(url);
    socket = ws;
    const pending = new Set(subscriptions.map((s) => s.event));
    ws.onopen = () => {
      for (const s of subscriptions) ws.send(JSON.stringify(s));
    };
    ws.onmessage = (m) => {
      const frame = parse(m.data);
      if (!frame?.event) return;
      if (frame.signal === 'start') {
        pending.delete(frame.event as EventSubscription['event']);
        if (pending.size === 0) {
          delay = 1000;
          failures = 0;
          handlers.onState?.('live');
          handlers.onLive?.();
        }
      } else if (frame.signal === 'data') handlers.onEvent(frame.event, frame.payload);
    };
    ws.onclose = () => {
      if (socket === ws) socket = undefined;
      retry();
    };
  };

  signal.addEventListener(
    'abort',
    () => {
      if (timer) clearTimeout(timer);
      socket?.close(1000);
      handlers.onState?.('closed');
    },
    { once: true },
  );
  void connect();
}

export interface StreamHandlers {
  onStart(interval: number | null): void;
  onData(payload: unknown): void;
  /** The stream ended: the device stopped it, refused it, or the socket closed. */
  onEnd(reason: string, isError: boolean): void;
}

/** One resource stream; returns a function that closes it. */
export async function openResourceStream(
  api: Api,
  device: string,
  resource: string,
  intervalSeconds: number,
  handlers: StreamHandlers,
): Promise<() => void> {
  const query: Record<string, string> = intervalSeconds > 0 ? { interval: String(intervalSeconds) } : {};
  const url = await api.socketUrl(
    `${api.userPath(3)}/devices/${encodeURIComponent(device)}/resources/${encodePath(resource)}`,
    query,
  );
  const ws = new WebSocket(url);
  let ended = false;
  let closedByUs = false;
  const end = (reason: string, isError: boolean) => {
    if (ended) return;
    ended = true;
    handlers.onEnd(reason, isError);
  };
  ws.onmessage = (m) => {
    const frame = parse(m.data);
    if (!frame) return;
    const payload = frame.payload as
      | { interval?: number | null; message?: string; code?: string }
      | undefined;
    if (frame.signal === 'start') handlers.onStart(payload?.interval ?? null);
    else if (frame.signal === 'data') handlers.onData(frame.payload);
    else if (frame.signal === 'stop') end(payload?.message ?? 'the device stopped the stream', false);
    else if (frame.signal === 'error')
      end(`${payload?.message ?? 'stream error'}${payload?.code ? ` (${payload.code})` : ''}`, true);
  };
  ws.onclose = (e) => {
    if (closedByUs) end('stopped', false);
    else
      end(
        e.code === 1006
          ? 'connection refused or lost (device unknown, or not allowed?)'
          : e.reason || 'closed',
        true,
      );
  };
  return () => {
    closedByUs = true;
    ws.close(1000);
  };
}
