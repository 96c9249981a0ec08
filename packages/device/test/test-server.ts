/**
 * A minimal IOTMP server built from the same session engine, for tests: TCP, TLS (with a
 * self-signed certificate made by openssl) and WebSocket listeners on loopback, one user
 * store, and just enough server resources (properties, buckets, topics, events, device
 * calls) to exercise the SDK. The real server is a separate package.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import {
  type InboundSubscription,
  ResourceError,
  type ServerCall,
  Session,
  type SessionOptions,
  type Transport,
} from '@iotmp/protocol';
import {
  acceptWebSocket,
  iotmpWebSocketServerOptions,
  SocketTransport,
  WEBSOCKET_PATH,
} from '@iotmp/protocol/node';
import type { PsonValue } from '@iotmp/pson';
import { WebSocketServer } from 'ws';

export interface TestCert {
  cert: string;
  key: string;
}

/** A self-signed ECDSA P-256 certificate for localhost / 127.0.0.1, generated now. */
export function makeCert(): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'iotmp-cert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
        '-days',
        '2',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    return {
      cert: readFileSync(join(dir, 'cert.pem'), 'utf8'),
      key: readFileSync(join(dir, 'key.pem'), 'utf8'),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

interface Sub {
  session: Session;
  sub: InboundSubscription;
  parameters: Record<string, PsonValue>;
}

export class TestServer {
  readonly sessions = new Set<Session>();
  readonly devices = new Map<string, Session>();
  readonly properties = new Map<string, PsonValue>();
  readonly buckets = new Map<string, PsonValue[]>();
  readonly endpointCalls: Array<{ endpoint: PsonValue; data: PsonValue | undefined }> = [];
  readonly locks = new Map<string, Set<string>>();
  readonly calls: ServerCall[] = [];
  readonly logins: string[] = [];
  private readonly subs = new Set<Sub>();
  private readonly listeners: Array<net.Server | HttpServer> = [];
  private wss: WebSocketServer | undefined;
  credentials = new Map<string, string>([['user1/sensor1', 'secret']]);
  tcpPort = 0;
  tlsPort = 0;
  wsPort = 0;
  cert: TestCert | undefined;
  /** Extra session options (limits, clock). */
  sessionOptions: Partial<SessionOptions> = {};
  /** Waiters for the next login of a device. */
  private readonly loginWaiters: Array<{ id: string; resolve: (s: Session) => void }> = [];

  async start(options: { tls?: boolean } = {}): Promise<this> {
    const tcp = net.createServer((socket) => this.accept(new SocketTransport(socket)));
    this.tcpPort = await listen(tcp);
    this.listeners.push(tcp);
    if (options.tls) {
      this.cert = makeCert();
      const server = tls.createServer(
        { cert: this.cert.cert, key: this.cert.key, minVersion: 'TLSv1.2' },
        (socket) => this.accept(new SocketTransport(socket)),
      );
      this.tlsPort = await listen(server);
      this.listeners.push(server);
    }
    const http = createHttpServer((_req, res) => res.writeHead(404).end());
    this.wss = new WebSocketServer(iotmpWebSocketServerOptions({ server: http, path: WEBSOCKET_PATH }));
    this.wss.on('connection', (ws, req) => this.accept(acceptWebSocket(ws, req.socket.remoteAddress)));
    this.wsPort = await listen(http);
    this.listeners.push(http);
    return this;
  }

  /** Resolves with the session of the next successful login of `username/deviceId`. */
  nextLogin(id: string): Promise<Session> {
    return new Promise((resolve) => this.loginWaiters.push({ id, resolve }));
  }

  private accept(transport: Transport): void {
    const session: Session = new Session({
      role: 'server',
      transport,
      authenticate: (info) => {
        const id = `${info.username}/${info.deviceId}`;
        if (this.credentials.get(id) !== info.credential) return false;
        this.logins.push(id);
        const old = this.devices.get(id);
        this.devices.set(id, session);
        old?.close();
        queueMicrotask(() => {
          for (const w of this.loginWaiters.filter((x) => x.id === id)) {
            this.loginWaiters.splice(this.loginWaiters.indexOf(w), 1);
            w.resolve(session);
          }
          this.emit('device_state_change', { device: info.deviceId, connected: true });
        });
        return true;
      },
      onServerCall: (call) => this.serverCall(session, call),
      onSubscribe: (sub) => this.subscribe(session, sub),
      onClose: () => {
        this.sessions.delete(session);
        const info = session.connectInfo;
        if (info && this.devices.get(`${info.username}/${info.deviceId}`) === session) {
          this.devices.delete(`${info.username}/${info.deviceId}`);
          this.emit('device_state_change', { device: info.deviceId, connected: false });
        }
        for (const s of this.subs) if (s.session === session) this.subs.delete(s);
      },
      ...this.sessionOptions,
    });
    this.sessions.add(session);
    session.start();
  }

  private async serverCall(session: Session, call: ServerCall): Promise<PsonValue | undefined> {
    this.calls.push(call);
    const user = session.connectInfo?.username ?? '';
    const device = session.connectInfo?.deviceId ?? '';
    switch (call.code) {
      case 1: {
        const v = this.properties.get(`${device}:${String(call.identifier)}`);
        if (v === undefined) throw new ResourceError(404, 'property not found');
        return v;
      }
      case 2:
        this.setProperty(device, String(call.identifier), call.data ?? null);
        return undefined;
      case 3: {
        const [target, resource] = call.identifier as [string, string];
        const other = this.devices.get(`${user}/${target}`);
        if (!other) throw new ResourceError(404, `device ${target} is not connected`);
        return other.run(resource, call.data);
      }
      case 4:
        this.endpointCalls.push({ endpoint: call.identifier ?? null, data: call.data });
        return { status: 200, echo: call.data ?? null };
      case 5: {
        const list = this.buckets.get(String(call.identifier)) ?? [];
        list.push(call.data ?? null);
        this.buckets.set(String(call.identifier), list);
        return undefined;
      }
      case 6: {
        const name = String(call.identifier);
        const holders = this.locks.get(name) ?? new Set<string>();
        const slots = (call.data as { slots?: number } | undefined)?.slots ?? 1;
        if (holders.size >= slots) throw new ResourceError(409, 'no free slot');
        holders.add(device);
        this.locks.set(name, holders);
        return undefined;
      }
      case 7:
        this.locks.get(String(call.identifier))?.delete(device);
        return undefined;
      default:
        throw new ResourceError(404, `unknown server resource ${call.code}`);
    }
  }

  setProperty(device: string, property: string, value: PsonValue): void {
    this.properties.set(`${device}:${property}`, value);
    for (const s of this.subs) {
      const p = s.parameters;
      if (
        p.event === 'device_property_update' &&
        s.session.connectInfo?.deviceId === device &&
        (p.filters as { property?: string } | undefined)?.property === property
      ) {
        s.sub.send(value);
      }
    }
  }

  emit(event: string, payload: PsonValue): void {
    for (const s of this.subs) if (s.parameters.event === event) s.sub.send(payload);
  }

  private subscribe(session: Session, sub: InboundSubscription) {
    const parameters = sub.parameters as Record<string, PsonValue>;
    if (typeof parameters !== 'object' || parameters === null || typeof parameters.event !== 'string') {
      throw new ResourceError(400, 'subscription needs an event');
    }
    const entry: Sub = { session, sub, parameters };
    if (parameters.event === 'device_topic_publish' && parameters.scope === 'publish') {
      return {
        onData: (payload: PsonValue | undefined) => this.publish(String(parameters.topic), payload ?? null),
      };
    }
    this.subs.add(entry);
    let initial: PsonValue | undefined;
    if (parameters.event === 'device_property_update' && parameters.current === true) {
      const property = (parameters.filters as { property?: string } | undefined)?.property;
      initial = this.properties.get(`${session.connectInfo?.deviceId}:${property}`);
    }
    return { initial, onClose: () => this.subs.delete(entry) };
  }

  publish(topic: string, payload: PsonValue): void {
    for (const s of this.subs) {
      const p = s.parameters;
      if (
        p.event === 'device_topic_publish' &&
        p.scope === 'subscribe' &&
        topicMatches(String(p.topic), topic)
      ) {
        s.sub.send({ topic, payload });
      }
    }
  }

  async stop(): Promise<void> {
    for (const s of this.sessions) s.close();
    this.wss?.close();
    await Promise.all(
      this.listeners.map(
        (l) =>
          new Promise<void>((resolve) => {
            (l as net.Server).close(() => resolve());
            (l as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
          }),
      ),
    );
  }
}

function listen(server: net.Server | HttpServer): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** MQTT topic filter matching with `+` and `#`. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
