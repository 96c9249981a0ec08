import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { main } from '../examples/quickstart.js';
import { TestServer } from './test-server.js';

let server: TestServer;
before(async () => {
  server = await new TestServer().start();
});
after(() => server.stop());

it('the quickstart example runs against a server and its resources answer', async () => {
  const login = server.nextLogin('user1/sensor1');
  const device = await main({
    IOTMP_HOST: '127.0.0.1',
    IOTMP_PORT: String(server.tcpPort),
    IOTMP_TRANSPORT: 'tcp',
    IOTMP_USER: 'user1',
    IOTMP_DEVICE: 'sensor1',
    IOTMP_CREDENTIAL: 'secret',
  });
  try {
    const session = await login;
    assert.deepEqual(await session.run('sum', { a: 1, b: 2 }), { result: 3 });
    assert.deepEqual(await session.run('led', { state: true }), { state: true });
    assert.equal(await session.run('gpio/4'), false);
    assert.deepEqual(server.properties.get('sensor1:config'), { interval: 10 });
    assert.deepEqual(server.buckets.get('readings'), [{ celsius: 22.5 }]);
  } finally {
    await device.close();
  }
});
