/**
 * Topics (issue 5 §2, §6): MQTT 3.1.1 topic rules (validation, `+` and `#` matching, `$`
 * topics), retained messages and per-user isolation in the broker; then end to end between
 * SDK devices of both protocol versions (wildcards, retained first, empty payload clears)
 * and the events WebSocket (`device_topic_publish` with a topic filter).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Device, PsonValue } from '@iotmp/device';
import { type DecodedMessage, encodeMessage, FrameDecoder, MessageType } from '@iotmp/protocol';
import WebSocket from 'ws';
import {
  isEmptyPayload,
  TopicBroker,
  type TopicMessage,
  topicFilterError,
  topicMatches,
  topicNameError,
} from '../src/events/topics.js';
import { ADMIN, TestServer, VERSIONS, waitFor, withTimeout } from './helpers.js';

describe('topic rules (MQTT 3.1.1 §4.7)', () => {
  it('matches + (one level) and # (any levels, parent included)', () => {
    const cases: Array<[string, string, boolean]> = [
      ['sport/tennis/player1/#', 'sport/tennis/player1', true],
      ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
      ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
      ['sport/#', 'sport', true],
      ['#', 'a/b/c', true],
      ['#', '/', true],
      ['sport/tennis/+', 'sport/tennis/player1', true],
      ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
      ['sport/+', 'sport', false],
      ['sport/+', 'sport/', true],
      ['+/+', '/finance', true],
      ['/+', '/finance', true],
      ['+', '/finance', false],
      ['a/b', 'a/b', true],
      ['a/b', 'a/B', false],
      ['a/b', 'a/b/c', false],
      ['a/+/c', 'a//c', true],
      ['+/monitor/Clients', '$SYS/monitor/Clients', false],
      ['#', '$SYS/x', false],
      ['$SYS/#', '$SYS/x', true],
      ['$SYS/monitor/+', '$SYS/monitor/Clients', true],
    ];
    for (const [filter, topic, expected] of cases) {
      assert.equal(topicMatches(filter, topic), expected, `${filter} vs ${topic}`);
    }
  });

  it('validates filters and topic names', () => {
    for (const ok of ['#', '+', 'a/#', '+/b/#', 'a/+/c', '/', 'a//b', '$SYS/+', 'ünï/😀']) {
      assert.equal(topicFilterError(ok), undefined, ok);
    }
    for (const badFilter of ['', 'a/#/b', 'a#', '#/a', 'a/b#', 'a+/b', 'a/+b', '++', 'a\u0000b', 7, null]) {
      assert.equal(typeof topicFilterError(badFilter), 'string', String(badFilter));
    }
    assert.match(topicFilterError('x'.repeat(1025)) as string, /longer than 1024/);
    assert.match(topicFilterError(Array(65).fill('a').join('/')) as string, /levels/);
    for (const ok of ['a', 'a/b/c', '/', '$SYS/x']) assert.equal(topicNameError(ok), undefined, ok);
    for (const badName of ['a/+', '#', 'a/#', '', 'a\u0000', 1]) {
      assert.equal(typeof topicNameError(badName), 'string', String(badName));
    }
    assert.ok(isEmptyPayload(undefined) && isEmptyPayload(null) && isEmptyPayload(''));
    assert.ok(isEmptyPayload(new Uint8Array(0)));
    assert.ok(!isEmptyPayload(0) && !isEmptyPayload(false) && !isEmptyPayload({}));
  });
});

describe('TopicBroker', () => {
  it('delivers per user, keeps retained messages, clears them with an empty payload', () => {
    const broker = new TopicBroker();
    const alice: TopicMessage[] = [];
    const bob: TopicMessage[] = [];
    const a = broker.subscribe('alice', 'home/+/temp', (m) => alice.push(m));
    broker.subscribe('bob', '#', (m) => bob.push(m));
    assert.equal(broker.publish('alice', 'home/kitchen/temp', 21), 1);
    assert.equal(broker.publish('alice', 'home/kitchen/humidity', 40), 0);
    assert.deepEqual(alice, [{ topic: 'home/kitchen/temp', payload: 21 }]);
    assert.deepEqual(bob, [], "bob's # never sees alice's topics");

    broker.publish('alice', 'home/hall/temp', 19, true);
    assert.equal(broker.retainedOf('alice', 'home/hall/temp'), 19);
    assert.equal(broker.retainedOf('bob', 'home/hall/temp'), undefined);
    const late = broker.subscribe('alice', 'home/#', () => {});
    assert.deepEqual(late.retained, [{ topic: 'home/hall/temp', payload: 19 }]);
    assert.deepEqual(broker.subscribe('bob', '#', () => {}).retained, []);
    broker.publish('alice', 'home/hall/temp', 20, true);
    assert.equal(broker.retainedOf('alice', 'home/hall/temp'), 20, 'a new retained message replaces');
    broker.publish('alice', 'home/hall/temp', null, true);
    assert.equal(broker.retainedOf('alice', 'home/hall/temp'), undefined, 'empty payload clears');
    a.unsubscribe();
    late.unsubscribe();
    assert.equal(broker.subscriptionCount('alice'), 0);
  });

  it('bounds retained messages per user, in count and bytes', () => {
    const warnings: string[] = [];
    const broker = new TopicBroker({
      maxRetainedPerUser: 3,
      maxRetainedBytesPerUser: 100,
      onWarning: (m) => warnings.push(m),
    });
    for (let i = 0; i < 5; i++) broker.publish('u', `t/${i}`, i, true);
    assert.deepEqual(
      [0, 1, 2, 3, 4].map((i) => broker.retainedOf('u', `t/${i}`)),
      [0, 1, 2, undefined, undefined],
    );
    broker.publish('u', 't/0', 'x'.repeat(200), true);
    assert.equal(broker.retainedOf('u', 't/0'), undefined, 'too big to keep (and the old one is replaced)');
    assert.equal(warnings.length, 3);
    // A listener that throws does not stop delivery to the others.
    const got: PsonValue[] = [];
    broker.subscribe('u', '#', () => {
      throw new Error('boom');
    });
    broker.subscribe('u', '#', (m) => got.push(m.payload));
    assert.equal(broker.publish('u', 'x', 1), 2);
    assert.deepEqual(got, [1]);
  });
});

// ---------------------------------------------------------------------------------------------

let t: TestServer;
let bobToken = '';

before(async () => {
  t = await TestServer.start();
  await t.server.tokens.createUser('bob', 'bob-password-1234');
  bobToken = (await t.login('bob', 'bob-password-1234')).access_token;
});
after(async () => {
  await t?.close();
});

/**
 * Returns once the server has handled everything `device` sent before: a confirmed call on
 * the same connection is answered after the frames before it (publishes have no answer).
 */
async function flush(device: Device): Promise<void> {
  await device.properties.set('flush', 0);
}

async function next<T>(it: AsyncIterator<T>, what: string): Promise<T> {
  const r = await withTimeout(it.next(), 5000, what);
  assert.equal(r.done, false, `${what}: the subscription ended`);
  return r.value;
}

describe('topics between devices (both protocol versions) and the events WebSocket', () => {
  const devices: Record<string, Device> = {};

  before(async () => {
    for (const version of VERSIONS) {
      await t.createDevice(`topic-v${version}`, 'topic-secret');
      devices[`v${version}`] = t.device(
        version === 0 ? 'tcp' : 'ws',
        version,
        `topic-v${version}`,
        'topic-secret',
      );
    }
    await t.createDevice('topic-bob', 'bob-secret', { user: 'bob', token: bobToken });
    devices.bob = t.device('tcp', 1, 'topic-bob', 'bob-secret', { username: 'bob' });
    await Promise.all(Object.values(devices).map((d) => d.connect()));
  });

  it('publish/subscribe with + and #, across protocol versions, never across users', async () => {
    const v0 = devices.v0 as Device;
    const v1 = devices.v1 as Device;
    const bob = devices.bob as Device;
    const plus = v0.topics.subscribe('farm/+/temperature');
    const hash = v1.topics.subscribe('farm/#');
    const bobAll = bob.topics.subscribe('#');
    await Promise.all([plus.ready, hash.ready, bobAll.ready]);

    await v1.topics.publish('farm/barn/temperature', { celsius: 18.5 });
    assert.deepEqual(await next(plus, '+ match'), {
      topic: 'farm/barn/temperature',
      payload: { celsius: 18.5 },
    });
    assert.deepEqual(await next(hash, '# match'), {
      topic: 'farm/barn/temperature',
      payload: { celsius: 18.5 },
    });
    await v0.topics.publish('farm/barn/humidity', 70);
    await v0.topics.publish('farm/field/temperature', 25);
    assert.deepEqual(await next(hash, '# match 2'), { topic: 'farm/barn/humidity', payload: 70 });
    assert.deepEqual(await next(hash, '# match 3'), { topic: 'farm/field/temperature', payload: 25 });
    assert.deepEqual(
      await next(plus, '+ match 2'),
      { topic: 'farm/field/temperature', payload: 25 },
      'humidity skipped',
    );

    // bob publishes on the same topic: admin's subscribers do not see it, bob's do.
    await bob.topics.publish('farm/barn/temperature', 'bob only');
    assert.deepEqual(await next(bobAll, "bob's own"), {
      topic: 'farm/barn/temperature',
      payload: 'bob only',
    });
    await v1.topics.publish('farm/end', 'end');
    assert.deepEqual(
      await next(hash, 'marker'),
      { topic: 'farm/end', payload: 'end' },
      'no bob message before it',
    );
    await bob.topics.publish('bob/end', 'end');
    assert.deepEqual(
      await next(bobAll, 'bob marker'),
      { topic: 'bob/end', payload: 'end' },
      'no admin message seen by bob',
    );
    await Promise.all([plus.return?.(), hash.return?.(), bobAll.return?.()]);
  });

  it('retained: new subscribers get it first; an empty payload clears it', async () => {
    const v0 = devices.v0 as Device;
    const v1 = devices.v1 as Device;
    await v0.topics.publish('status/gate', { open: false }, { retained: true });
    await v0.topics.publish('status/door', 'closed', { retained: true, qos: 1 });
    await flush(v0);
    const sub = v1.topics.subscribe('status/+');
    await sub.ready;
    await v0.topics.publish('status/live', 'now');
    const got = [await next(sub, 'first'), await next(sub, 'second'), await next(sub, 'third')];
    assert.deepEqual(
      got.slice(0, 2).sort((a, b) => a.topic.localeCompare(b.topic)),
      [
        { topic: 'status/door', payload: 'closed' },
        { topic: 'status/gate', payload: { open: false } },
      ],
    );
    assert.deepEqual(got[2], { topic: 'status/live', payload: 'now' });
    await sub.return?.();
    await v0.topics.publish('status/gate', '', { retained: true });
    await flush(v0);
    const again = v1.topics.subscribe('status/gate');
    await again.ready;
    await v0.topics.publish('status/gate', 'live again');
    assert.deepEqual(await next(again, 'after clearing'), { topic: 'status/gate', payload: 'live again' });
    await again.return?.();
  });

  it('retained messages go out before a live message that arrives with the subscription', async () => {
    // Raw frames, so that START_STREAM and a publish arrive in one read.
    const v0 = devices.v0 as Device;
    await v0.topics.publish('gate/retained', 'old news', { retained: true });
    await flush(v0);
    await t.createDevice('topic-raw', 'raw-secret');
    const socket = await t.rawSocket(t.server.tcpPort);
    const received: DecodedMessage[] = [];
    const decoder = new FrameDecoder({ onMessage: (m) => received.push(m) });
    socket.on('data', (c) => decoder.push(c));
    const until = (match: (m: DecodedMessage) => boolean, what: string) =>
      waitFor(() => received.find(match), what, 5000, 5);
    socket.write(
      encodeMessage({ type: MessageType.CONNECT, streamId: 1, payload: [ADMIN, 'topic-raw', 'raw-secret'] }),
    );
    await until((m) => m.streamId === 1, 'login');
    const publish = { event: 'device_topic_publish', scope: 'publish', topic: 'gate/live' };
    socket.write(
      encodeMessage({ type: MessageType.START_STREAM, streamId: 100, resource: 8, parameters: publish }),
    );
    await until((m) => m.streamId === 100, 'publish stream open');
    const subscribe = { event: 'device_topic_publish', scope: 'subscribe', topic: 'gate/+' };
    socket.write(
      Buffer.concat([
        encodeMessage({ type: MessageType.START_STREAM, streamId: 101, resource: 8, parameters: subscribe }),
        encodeMessage({ type: MessageType.STREAM_DATA, streamId: 100, payload: 'breaking' }),
      ]),
    );
    await until(
      (m) =>
        m.streamId === 101 &&
        m.type === MessageType.STREAM_DATA &&
        m.payload !== undefined &&
        (m.payload as { topic?: string }).topic === 'gate/live',
      'live message',
    );
    assert.deepEqual(
      received.filter((m) => m.streamId === 101).map((m) => [m.type, m.payload]),
      [
        [MessageType.OK, undefined],
        [MessageType.STREAM_DATA, { topic: 'gate/retained', payload: 'old news', retained: true }],
        [MessageType.STREAM_DATA, { topic: 'gate/live', payload: 'breaking' }],
      ],
    );
  });

  it('an invalid filter or topic is refused', async () => {
    const sub = (devices.v1 as Device).topics.subscribe('a/#/b');
    await assert.rejects(withTimeout(sub.ready, 5000, 'refusal'), /# must be alone/);
    await assert.rejects((devices.v1 as Device).topics.publish('a/+/b', 1), /wildcards/);
  });

  it('the events WebSocket subscribes with a topic filter (retained first), devices publish', async () => {
    const v0 = devices.v0 as Device;
    await v0.topics.publish('lights/kitchen', { on: true }, { retained: true });
    await flush(v0);
    const ws = new WebSocket(`ws://127.0.0.1:${t.server.httpPort}/v2/users/${ADMIN}/events`, {
      headers: { authorization: `Bearer ${t.adminToken}` },
    });
    t.closers.push(() => ws.terminate());
    const frames: Array<{ event?: string; signal: string; payload?: unknown }> = [];
    ws.on('message', (d) => frames.push(JSON.parse(String(d))));
    await withTimeout(new Promise((r) => ws.once('open', r)), 5000, 'open');
    const frame = async (n: number) => {
      const deadline = Date.now() + 5000;
      while (frames.length < n) {
        if (Date.now() > deadline) assert.fail(`expected ${n} frames, got ${JSON.stringify(frames)}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      return frames[n - 1];
    };
    ws.send(JSON.stringify({ event: 'device_topic_publish', filters: { topic: 'lights/#' } }));
    assert.deepEqual(await frame(1), {
      event: 'device_topic_publish',
      signal: 'start',
      payload: { filters: { topic: 'lights/#' } },
    });
    assert.deepEqual((await frame(2))?.payload, {
      topic: 'lights/kitchen',
      payload: { on: true },
      retained: true,
    });
    await v0.topics.publish('lights/hall', new Uint8Array([1, 2]));
    assert.deepEqual(await frame(3), {
      event: 'device_topic_publish',
      signal: 'data',
      payload: { topic: 'lights/hall', payload: 'AQI=' },
    });
    ws.send(JSON.stringify({ event: 'device_topic_publish', filters: { topic: 'a/#/b' } }));
    assert.equal((await frame(4))?.signal, 'error');
    ws.send(JSON.stringify({ event: 'device_topic_publish' }));
    assert.match(JSON.stringify((await frame(5))?.payload), /filters.topic is required/);
    // A token limited to one device does not reach topics.
    const tok = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'one-device', scope: { access: 'read', devices: { 'topic-v0': {} } } },
    });
    assert.equal(tok.status, 201, tok.bytes.toString());
    const limited = new WebSocket(`ws://127.0.0.1:${t.server.httpPort}/v2/users/${ADMIN}/events`, {
      headers: { authorization: `Bearer ${(tok.body as { access_token: string }).access_token}` },
    });
    t.closers.push(() => limited.terminate());
    const answer = new Promise<string>((r) => limited.once('message', (d) => r(String(d))));
    await withTimeout(new Promise((r) => limited.once('open', r)), 5000, 'open limited');
    limited.send(JSON.stringify({ event: 'device_topic_publish', filters: { topic: '#' } }));
    assert.match(await withTimeout(answer, 5000, 'limited answer'), /"signal":"error".*forbidden/);
  });
});
