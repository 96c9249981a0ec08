import type { Db } from './database.js';

export interface UserRecord {
  username: string;
  passwordHash: string;
  createdAt: number;
}

export interface DeviceRecord {
  username: string;
  device: string;
  name: string;
  description: string;
  enabled: boolean;
  credentialHash: string;
  credentialVersion: number;
  createdAt: number;
  updatedAt: number;
  lastConnectedTs: number | null;
  lastIp: string | null;
}

export interface AccessTokenRecord {
  /** Internal id (the JWT's `jti`): never changes. */
  id: string;
  username: string;
  /** The key naming the token in paths (`/tokens/{token}`), unique per user: chosen, or the id. */
  token: string;
  name: string;
  description: string;
  /** A disabled token is refused until enabled again. */
  enabled: boolean;
  scope: TokenScope;
  /** The permissions as given in Thinger.io's form, when the token was created that way. */
  permissions: TokenPermissions | null;
  createdAt: number;
  updatedAt: number;
  expiresAt: number | null;
}

/** Thinger.io's permission trees: {"<ResourceType>": {"<id>": "*" | ["<Action>"]}}. */
export interface TokenPermissions {
  allow: Record<string, unknown>;
  deny: Record<string, unknown>;
}

/**
 * What an access token may do. `devices` absent = all devices; per device, `resources`
 * absent = all resources; the key "*" (no device id can be "*") stands for every device,
 * and for nothing else (no buckets, endpoints, …). `access` "read" allows GET (describe,
 * read, stats), "call" also running resources and changing things, "admin" also managing
 * the account (devices, buckets, tokens): what a login token can do.
 */
export interface TokenScope {
  access: 'read' | 'call' | 'admin';
  devices?: Record<string, { resources?: string[] }>;
}

interface TokenRow {
  id: string;
  username: string;
  token: string | null;
  name: string;
  description: string;
  enabled: number;
  scope: string;
  permissions: string | null;
  created_at: number;
  updated_at: number | null;
  expires_at: number | null;
}

function toToken(row: TokenRow): AccessTokenRecord {
  return {
    id: row.id,
    username: row.username,
    token: row.token ?? row.id,
    name: row.name,
    description: row.description,
    enabled: row.enabled === 1,
    scope: JSON.parse(row.scope) as TokenScope,
    permissions: row.permissions === null ? null : (JSON.parse(row.permissions) as TokenPermissions),
    createdAt: row.created_at,
    updatedAt: row.updated_at ?? row.created_at,
    expiresAt: row.expires_at,
  };
}

/** Changes to an access token (absent: unchanged). */
export interface AccessTokenPatch {
  name?: string;
  description?: string;
  enabled?: boolean;
  scope?: TokenScope;
  permissions?: TokenPermissions | null;
  expiresAt?: number | null;
}

interface DeviceRow {
  username: string;
  device: string;
  name: string;
  description: string;
  enabled: number;
  credential_hash: string;
  credential_version: number;
  created_at: number;
  updated_at: number;
  last_connected_ts: number | null;
  last_ip: string | null;
}

function toDevice(row: DeviceRow): DeviceRecord {
  return {
    username: row.username,
    device: row.device,
    name: row.name,
    description: row.description,
    enabled: row.enabled === 1,
    credentialHash: row.credential_hash,
    credentialVersion: row.credential_version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastConnectedTs: row.last_connected_ts,
    lastIp: row.last_ip,
  };
}

export class AlreadyExistsError extends Error {
  override name = 'AlreadyExistsError';
}

/** Users, devices and tokens in SQLite. Every method is one statement or one transaction. */
export class AccountStore {
  private readonly st;

  constructor(private readonly db: Db) {
    this.st = {
      insertUser: db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)'),
      getUser: db.prepare('SELECT username, password_hash, created_at FROM users WHERE username = ?'),
      countUsers: db.prepare('SELECT count(*) AS n FROM users'),
      insertDevice: db.prepare(
        `INSERT INTO devices (username, device, name, description, enabled, credential_hash, created_at, updated_at)
         VALUES (@username, @device, @name, @description, @enabled, @credentialHash, @now, @now)`,
      ),
      getDevice: db.prepare('SELECT * FROM devices WHERE username = ? AND device = ?'),
      listDevices: db.prepare('SELECT * FROM devices WHERE username = ? ORDER BY device LIMIT ? OFFSET ?'),
      countDevices: db.prepare('SELECT count(*) AS n FROM devices WHERE username = ?'),
      listDevicesMatching: db.prepare(
        `SELECT * FROM devices WHERE username = ? AND (device LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')
         ORDER BY device LIMIT ? OFFSET ?`,
      ),
      countDevicesMatching: db.prepare(
        `SELECT count(*) AS n FROM devices WHERE username = ? AND (device LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')`,
      ),
      deviceNames: db
        .prepare('SELECT device, name FROM devices WHERE username = ? ORDER BY device')
        .raw(true),
      deleteDevice: db.prepare('DELETE FROM devices WHERE username = ? AND device = ?'),
      recordConnection: db.prepare(
        'UPDATE devices SET last_connected_ts = ?, last_ip = ? WHERE username = ? AND device = ?',
      ),
      insertToken: db.prepare(
        `INSERT INTO access_tokens (id, username, token, name, description, enabled, scope, permissions, created_at, updated_at, expires_at)
         VALUES (@id, @username, @token, @name, @description, @enabled, @scope, @permissions, @createdAt, @updatedAt, @expiresAt)`,
      ),
      getToken: db.prepare('SELECT * FROM access_tokens WHERE id = ?'),
      getTokenByKey: db.prepare('SELECT * FROM access_tokens WHERE username = ? AND token = ?'),
      listTokens: db.prepare('SELECT * FROM access_tokens WHERE username = ? ORDER BY created_at, id'),
      deleteToken: db.prepare('DELETE FROM access_tokens WHERE username = ? AND id = ?'),
      insertRefresh: db.prepare(
        'INSERT INTO refresh_tokens (token_hash, username, expires_at) VALUES (?, ?, ?)',
      ),
      takeRefresh: db.prepare(
        'DELETE FROM refresh_tokens WHERE token_hash = ? RETURNING username, expires_at',
      ),
      purgeRefresh: db.prepare('DELETE FROM refresh_tokens WHERE expires_at < ?'),
      getSetting: db.prepare('SELECT value FROM settings WHERE key = ?'),
      setSetting: db.prepare(
        'INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
      ),
    };
  }

  // --- users

  createUser(username: string, passwordHash: string): void {
    try {
      this.st.insertUser.run(username, passwordHash, Date.now());
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new AlreadyExistsError(`user ${username} already exists`);
      }
      throw err;
    }
  }

  /**
   * Every API request looks its user up (a token must name a user that exists): users found
   * are remembered. Users are never changed or deleted here; a method that does must drop the
   * entry. Misses are not remembered, so a user created later is found.
   */
  private readonly users = new Map<string, UserRecord>();

  getUser(username: string): UserRecord | undefined {
    const known = this.users.get(username);
    if (known) return known;
    const row = this.st.getUser.get(username) as
      | { username: string; password_hash: string; created_at: number }
      | undefined;
    if (!row) return undefined;
    const user = Object.freeze({
      username: row.username,
      passwordHash: row.password_hash,
      createdAt: row.created_at,
    });
    if (this.users.size >= 10_000) this.users.clear();
    this.users.set(username, user);
    return user;
  }

  countUsers(): number {
    return (this.st.countUsers.get() as { n: number }).n;
  }

  // --- devices

  createDevice(d: {
    username: string;
    device: string;
    name: string;
    description: string;
    enabled: boolean;
    credentialHash: string;
  }): DeviceRecord {
    try {
      this.st.insertDevice.run({ ...d, enabled: d.enabled ? 1 : 0, now: Date.now() });
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new AlreadyExistsError(`device ${d.device} already exists`);
      }
      throw err;
    }
    return this.getDevice(d.username, d.device) as DeviceRecord;
  }

  getDevice(username: string, device: string): DeviceRecord | undefined {
    const row = this.st.getDevice.get(username, device) as DeviceRow | undefined;
    return row && toDevice(row);
  }

  /** A page of the user's devices; with `match`, those whose id or name contains it (any case). */
  listDevices(username: string, count: number, index: number, match?: string): DeviceRecord[] {
    const rows =
      match === undefined
        ? this.st.listDevices.all(username, count, index)
        : this.st.listDevicesMatching.all(username, likePattern(match), likePattern(match), count, index);
    return (rows as DeviceRow[]).map(toDevice);
  }

  /**
   * The user's devices (in id order) whose id and name pass `filter`: those at
   * [index, index + count), and how many pass in all. Reads ids and names one row at a time
   * (memory bounded by `count`).
   */
  filterDevices(
    username: string,
    filter: (device: string, name: string) => boolean,
    count: number,
    index: number,
  ): { page: DeviceRecord[]; total: number } {
    const ids: string[] = [];
    let total = 0;
    for (const row of this.st.deviceNames.iterate(username) as IterableIterator<[string, string]>) {
      if (!filter(row[0], row[1])) continue;
      if (total >= index && ids.length < count) ids.push(row[0]);
      total++;
    }
    // The iteration is over: the connection may run other statements again.
    const page = ids
      .map((id) => this.getDevice(username, id))
      .filter((d): d is DeviceRecord => d !== undefined);
    return { page, total };
  }

  countDevices(username: string, match?: string): number {
    const row =
      match === undefined
        ? this.st.countDevices.get(username)
        : this.st.countDevicesMatching.get(username, likePattern(match), likePattern(match));
    return (row as { n: number }).n;
  }

  /** Applies the given changes; a new credential hash bumps the credential version. */
  updateDevice(
    username: string,
    device: string,
    patch: { name?: string; description?: string; enabled?: boolean; credentialHash?: string },
  ): DeviceRecord | undefined {
    const sets: string[] = [];
    const values: Array<string | number> = [];
    if (patch.name !== undefined) {
      sets.push('name = ?');
      values.push(patch.name);
    }
    if (patch.description !== undefined) {
      sets.push('description = ?');
      values.push(patch.description);
    }
    if (patch.enabled !== undefined) {
      sets.push('enabled = ?');
      values.push(patch.enabled ? 1 : 0);
    }
    if (patch.credentialHash !== undefined) {
      sets.push('credential_hash = ?', 'credential_version = credential_version + 1');
      values.push(patch.credentialHash);
    }
    sets.push('updated_at = ?');
    values.push(Date.now());
    const info = this.db
      .prepare(`UPDATE devices SET ${sets.join(', ')} WHERE username = ? AND device = ?`)
      .run(...values, username, device);
    return info.changes === 0 ? undefined : this.getDevice(username, device);
  }

  /**
   * Deletes a device, and the access tokens that give access to it alone (its device tokens):
   * a device created later under the same id must not inherit them.
   */
  deleteDevice(username: string, device: string): boolean {
    const onlyThisDevice = this.listAccessTokens(username).filter((t) => {
      const devices = t.scope.access === 'admin' ? undefined : t.scope.devices;
      return devices !== undefined && Object.keys(devices).length === 1 && Object.hasOwn(devices, device);
    });
    const deleted = this.db.transaction(() => {
      if (this.st.deleteDevice.run(username, device).changes === 0) return false;
      for (const t of onlyThisDevice) this.st.deleteToken.run(username, t.id);
      return true;
    })();
    if (deleted) for (const t of onlyThisDevice) this.tokenChanged(t.id);
    return deleted;
  }

  /**
   * Notes a device's last login. Written in batches (one transaction every 250 ms): with
   * durable commits, one fsync per login would cap a reconnect storm at the disk's pace.
   * Losing the last 250 ms of these timestamps in a crash is harmless.
   */
  recordConnection(username: string, device: string, ts: number, ip: string | null): void {
    this.pendingConnections.set(`${username}\u0000${device}`, { username, device, ts, ip });
    this.connectionFlush ??= setTimeout(() => this.flushConnections(), 250).unref();
  }

  /** Writes the batched connection records now (also called at shutdown). */
  flushConnections(): void {
    if (this.connectionFlush) clearTimeout(this.connectionFlush);
    this.connectionFlush = undefined;
    if (this.pendingConnections.size === 0) return;
    const batch = [...this.pendingConnections.values()];
    this.pendingConnections.clear();
    this.db.transaction(() => {
      for (const c of batch) this.st.recordConnection.run(c.ts, c.ip, c.username, c.device);
    })();
  }

  private readonly pendingConnections = new Map<
    string,
    { username: string; device: string; ts: number; ip: string | null }
  >();
  private connectionFlush: NodeJS.Timeout | undefined;

  // --- access tokens

  /** Stores a new access token; AlreadyExistsError when the user has a token of that key. */
  createAccessToken(t: AccessTokenRecord): void {
    try {
      this.st.insertToken.run({
        ...t,
        enabled: t.enabled ? 1 : 0,
        scope: JSON.stringify(t.scope),
        permissions: t.permissions === null ? null : JSON.stringify(t.permissions),
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY')
        throw new AlreadyExistsError(`token ${t.token} already exists`);
      throw err;
    }
  }

  /** An access token by its internal id (the JWT's `jti`). */
  getAccessToken(id: string): AccessTokenRecord | undefined {
    const row = this.st.getToken.get(id) as TokenRow | undefined;
    return row && toToken(row);
  }

  /** A user's access token by key, or else by internal id. */
  findAccessToken(username: string, key: string): AccessTokenRecord | undefined {
    const row = (this.st.getTokenByKey.get(username, key) ?? this.st.getToken.get(key)) as
      | TokenRow
      | undefined;
    return row && row.username === username ? toToken(row) : undefined;
  }

  /** The user's access tokens, oldest first. */
  listAccessTokens(username: string): AccessTokenRecord[] {
    return (this.st.listTokens.all(username) as TokenRow[]).map(toToken);
  }

  private readonly tokenListeners = new Set<(id: string) => void>();

  /**
   * Calls `listener` with a token's internal id whenever that token is changed or deleted (open
   * WebSockets opened with it are closed: what it allows may have changed). Returns the unsubscribe.
   */
  onTokenChange(listener: (id: string) => void): () => void {
    this.tokenListeners.add(listener);
    return () => this.tokenListeners.delete(listener);
  }

  private tokenChanged(id: string): void {
    for (const l of this.tokenListeners) l(id);
  }

  /** Applies the given changes to a token (by internal id); the updated record, if it exists. */
  updateAccessToken(username: string, id: string, patch: AccessTokenPatch): AccessTokenRecord | undefined {
    const sets: string[] = [];
    const values: Array<string | number | null> = [];
    const set = (column: string, value: string | number | null) => {
      sets.push(`${column} = ?`);
      values.push(value);
    };
    if (patch.name !== undefined) set('name', patch.name);
    if (patch.description !== undefined) set('description', patch.description);
    if (patch.enabled !== undefined) set('enabled', patch.enabled ? 1 : 0);
    if (patch.scope !== undefined) set('scope', JSON.stringify(patch.scope));
    if (patch.permissions !== undefined)
      set('permissions', patch.permissions === null ? null : JSON.stringify(patch.permissions));
    if (patch.expiresAt !== undefined) set('expires_at', patch.expiresAt);
    set('updated_at', Date.now());
    const info = this.db
      .prepare(`UPDATE access_tokens SET ${sets.join(', ')} WHERE username = ? AND id = ?`)
      .run(...values, username, id);
    if (info.changes === 0) return undefined;
    this.tokenChanged(id);
    return this.getAccessToken(id);
  }

  /** Deletes a user's access token, named by key or internal id. */
  deleteAccessToken(username: string, key: string): boolean {
    const found = this.findAccessToken(username, key);
    if (found === undefined || this.st.deleteToken.run(username, found.id).changes === 0) return false;
    this.tokenChanged(found.id);
    return true;
  }

  // --- refresh tokens (single use: taking one deletes it)

  addRefreshToken(tokenHash: string, username: string, expiresAt: number): void {
    this.st.purgeRefresh.run(Date.now());
    this.st.insertRefresh.run(tokenHash, username, expiresAt);
  }

  takeRefreshToken(tokenHash: string): { username: string; expiresAt: number } | undefined {
    const row = this.st.takeRefresh.get(tokenHash) as { username: string; expires_at: number } | undefined;
    return row && { username: row.username, expiresAt: row.expires_at };
  }

  // --- settings

  getSetting(key: string): string | undefined {
    return (this.st.getSetting.get(key) as { value: string } | undefined)?.value;
  }

  setSetting(key: string, value: string): void {
    this.st.setSetting.run(key, value);
  }
}

/** `%text%` for LIKE, with LIKE's own wildcards in `text` taken literally. */
function likePattern(text: string): string {
  return `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}
