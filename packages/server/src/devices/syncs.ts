import { type Clock, systemClock, type TimerHandle } from '@iotmp/protocol';

/*
 * Syncs (device → server codes 6 and 7): named locks of a user with N slots, shared by the
 * user's devices. A lock request is answered at once: granted, or refused when every slot is
 * taken (no waiting queue; the device retries). A slot is held by one holder — a device and
 * the lock id it gave ("" when none) — until it is unlocked, its timeout passes, or the
 * session that took it ends. Everything is in memory: a restart frees every slot.
 */

export const MAX_SYNC_SLOTS = 1024;
/** Longest hold a timeout may ask for (seconds): one day. */
export const MAX_SYNC_TIMEOUT_SECONDS = 86_400;

export class SyncError extends Error {
  override name = 'SyncError';
  constructor(
    /** HTTP-like code for the device (409 busy, 404 not held, 429 too many syncs). */
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface SyncOptions {
  /** Syncs (with at least one slot held) per user (default 1024). */
  maxSyncsPerUser?: number;
  /** Slots held at once per user, all syncs (default 4096). */
  maxHoldersPerUser?: number;
  clock?: Clock;
}

interface Holder {
  device: string;
  lock: string;
  /** The session that took the slot: it is freed when that session ends. */
  owner: object;
  timer: TimerHandle | undefined;
}

interface UserSyncs {
  syncs: Map<string, Map<string, Holder>>;
  holders: number;
}

function holderKey(device: string, lock: string): string {
  return `${device}\u0000${lock}`;
}

export class SyncManager {
  private readonly users = new Map<string, UserSyncs>();
  private readonly clock: Clock;
  private readonly maxSyncs: number;
  private readonly maxHolders: number;

  constructor(options: SyncOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.maxSyncs = options.maxSyncsPerUser ?? 1024;
    this.maxHolders = options.maxHoldersPerUser ?? 4096;
  }

  /**
   * Takes a slot of `sync` for (`device`, `lock`). `slots` is how many holders the sync
   * admits, as this caller sees it; a holder that already has a slot keeps it (its timeout
   * restarts). `timeoutSeconds` > 0 frees the slot after that long. Throws SyncError when no
   * slot is free.
   */
  lock(
    username: string,
    sync: string,
    holder: { device: string; lock: string; owner: object },
    slots = 1,
    timeoutSeconds = 0,
  ): void {
    let u = this.users.get(username);
    const existing = u?.syncs.get(sync);
    const key = holderKey(holder.device, holder.lock);
    const held = existing?.get(key);
    if (held) {
      this.arm(username, sync, key, held, timeoutSeconds);
      held.owner = holder.owner;
      return;
    }
    if (existing && existing.size >= slots)
      throw new SyncError(409, `sync ${sync} is locked (${existing.size} of ${slots} slots taken)`);
    if (!u) {
      u = { syncs: new Map(), holders: 0 };
      this.users.set(username, u);
    }
    if (!existing && u.syncs.size >= this.maxSyncs)
      throw new SyncError(429, `too many syncs locked at once (at most ${this.maxSyncs})`);
    if (u.holders >= this.maxHolders)
      throw new SyncError(429, `too many sync slots held at once (at most ${this.maxHolders})`);
    let holders = existing;
    if (!holders) {
      holders = new Map();
      u.syncs.set(sync, holders);
    }
    const entry: Holder = { device: holder.device, lock: holder.lock, owner: holder.owner, timer: undefined };
    holders.set(key, entry);
    u.holders++;
    this.arm(username, sync, key, entry, timeoutSeconds);
  }

  private arm(username: string, sync: string, key: string, entry: Holder, timeoutSeconds: number): void {
    if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
    entry.timer = undefined;
    if (timeoutSeconds > 0) {
      entry.timer = this.clock.setTimeout(() => {
        entry.timer = undefined;
        this.remove(username, sync, key, entry);
      }, timeoutSeconds * 1000);
    }
  }

  private remove(username: string, sync: string, key: string, entry: Holder): boolean {
    const u = this.users.get(username);
    const holders = u?.syncs.get(sync);
    if (!u || !holders || holders.get(key) !== entry) return false;
    if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
    holders.delete(key);
    u.holders--;
    if (holders.size === 0) u.syncs.delete(sync);
    if (u.syncs.size === 0) this.users.delete(username);
    return true;
  }

  /** Frees the slot of (`device`, `lock`); throws SyncError(404) when it holds none. */
  unlock(username: string, sync: string, device: string, lock: string): void {
    const key = holderKey(device, lock);
    const entry = this.users.get(username)?.syncs.get(sync)?.get(key);
    if (!entry || !this.remove(username, sync, key, entry))
      throw new SyncError(
        404,
        `sync ${sync} is not locked by this device${lock ? ` with lock id ${lock}` : ''}`,
      );
  }

  /** Frees every slot taken through `owner` (a session that ended). Returns how many. */
  releaseOwner(username: string, owner: object): number {
    const u = this.users.get(username);
    if (!u) return 0;
    let freed = 0;
    for (const [sync, holders] of [...u.syncs]) {
      for (const [key, entry] of [...holders]) {
        if (entry.owner === owner && this.remove(username, sync, key, entry)) freed++;
      }
    }
    return freed;
  }

  /** Slots held in one sync (tests). */
  heldSlots(username: string, sync: string): number {
    return this.users.get(username)?.syncs.get(sync)?.size ?? 0;
  }

  /** Frees everything (shutdown). */
  clear(): void {
    for (const u of this.users.values()) {
      for (const holders of u.syncs.values()) {
        for (const entry of holders.values()) {
          if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
        }
      }
    }
    this.users.clear();
  }
}
