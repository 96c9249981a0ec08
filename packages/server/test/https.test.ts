/**
 * The API over HTTPS with the server's certificate (issue 4 §1; tools of issue 8 use it):
 * REST, the WebSocket API and devices over wss://…/iotmp on the HTTPS port, same routes and
 * the same authentication as plain HTTP.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Device } from '@iotmp/device';
import { Agent, fetch } from 'undici';
import WebSocket from 'ws';
import { ADMIN, ADMIN_PASSWORD, TestServer, waitForStatus, withTimeout } from './helpers.js';

let t: TestServer;
let agent: Agent;
let origin = '';

before(async () => {
  t = await TestServer.start({ https: true, tcp: false, tls: false });
  agent = new Agent({ connect: { ca: t.server.tlsCert } });
  origin = `https://localhost:${t.server.httpsPort}`;
});
after(async () => {
  await agent?.close();
  await t?.close();
});

async function api(path: string, init: { method?: string; token?: string; body?: unknown } = {}) {
  const headers: Record<string, string> = {};
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${origin}${path}`, {
    method: init.method ?? 'GET',
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    dispatcher: agent,
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as unknown) : undefined };
}

describe('HTTPS listener', () => {
  it('serves the API with the generated certificate; the same auth as HTTP', async () => {
    assert.ok(t.server.httpsPort > 0);
    assert.deepEqual((await api('/v1/server/version')).body, { version: '0.1.0', server: 'iotmp' });
    assert.equal((await api(`/v1/users/${ADMIN}/devices`)).status, 401);
    // A client that does not trust the certificate is refused by TLS, not served.
    await assert.rejects(fetch(`${origin}/health`));
  });

  it('a device over wss:// answers REST calls and streams to a WebSocket client, all on the HTTPS port', async () => {
    const login = await fetch(`${origin}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'password',
        username: ADMIN,
        password: ADMIN_PASSWORD,
      }).toString(),
      dispatcher: agent,
    });
    assert.equal(login.status, 200);
    const token = ((await login.json()) as { access_token: string }).access_token;
    const created = await api(`/v1/users/${ADMIN}/devices`, {
      method: 'POST',
      token,
      body: { device: 'secure1', credentials: 'secure-credential-1' },
    });
    assert.equal(created.status, 201);

    let reading = 20;
    const device = new Device({
      host: 'localhost',
      port: t.server.httpsPort,
      transport: 'wss',
      username: ADMIN,
      deviceId: 'secure1',
      credential: 'secure-credential-1',
      tls: { ca: t.server.tlsCert },
      connectTimeoutMs: 5000,
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    }).resource('temperature', { output: () => ({ celsius: reading++ }) });
    try {
      await device.connect();
      await waitForStatus(device, 'connected');
      const run = await api(`/v3/users/${ADMIN}/devices/secure1/resources/temperature`, { token });
      assert.equal(run.status, 200);
      assert.deepEqual(run.body, { celsius: 20 });

      const ws = new WebSocket(
        `wss://localhost:${t.server.httpsPort}/v3/users/${ADMIN}/devices/secure1/resources/temperature?interval=0.1&authorization=${token}`,
        { ca: t.server.tlsCert },
      );
      const frames: Array<{ signal: string; payload?: unknown }> = [];
      const gotData = new Promise<void>((resolve, reject) => {
        ws.on('message', (data) => {
          const frame = JSON.parse(String(data)) as { signal: string; payload?: unknown };
          frames.push(frame);
          if (frame.signal === 'data') resolve();
        });
        ws.on('error', reject);
      });
      await withTimeout(gotData, 5000, 'stream data over wss');
      ws.close();
      assert.equal(frames[0]?.signal, 'start');
      const data = frames.find((f) => f.signal === 'data');
      assert.equal(typeof (data?.payload as { celsius?: unknown })?.celsius, 'number');
    } finally {
      await device.close();
    }
  });
});
