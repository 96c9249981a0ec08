import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventQueue } from '../src/queue.js';

describe('EventQueue', () => {
  it('a reader already waiting gets the error that ends the queue', async () => {
    const q = new EventQueue<number>();
    const waiting = q.next();
    q.end(new Error('refused by the server'));
    await assert.rejects(waiting, /refused by the server/);
    assert.deepEqual(await q.next(), { value: undefined, done: true });
  });

  it('buffered items are read before the error', async () => {
    const q = new EventQueue<number>();
    q.push(1);
    q.end(new Error('gone'));
    assert.deepEqual(await q.next(), { value: 1, done: false });
    await assert.rejects(q.next(), /gone/);
  });

  it('keeps at most `capacity` items, dropping the oldest and counting them', async () => {
    const q = new EventQueue<number>(2);
    for (let i = 0; i < 5; i++) q.push(i);
    assert.equal(q.dropped, 3);
    assert.deepEqual(await q.next(), { value: 3, done: false });
    assert.deepEqual(await q.next(), { value: 4, done: false });
  });

  it('return() ends waiting readers without an error and runs onReturn once', async () => {
    let returned = 0;
    const q = new EventQueue<number>(10, () => returned++);
    const waiting = q.next();
    await q.return();
    await q.return();
    assert.deepEqual(await waiting, { value: undefined, done: true });
    assert.equal(returned, 1);
  });
});
