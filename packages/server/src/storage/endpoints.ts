import { AlreadyExistsError } from './accounts.js';
import type { Db } from './database.js';

export const HTTP_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;
export type HttpMethod = (typeof HTTP_METHODS)[number];

/** What an `http_request` endpoint sends; every string may hold `{{…}}` placeholders (endpoints/template.ts). */
export interface HttpRequestProfile {
  url: string;
  method: HttpMethod;
  /** Header name → value template. */
  headers?: Record<string, string>;
  /**
   * A string is a text template; any other JSON value is a JSON template. Absent: POST, PUT
   * and PATCH send the caller's data as JSON.
   */
  body?: unknown;
}

export interface EndpointRecord {
  username: string;
  endpoint: string;
  name: string;
  description: string;
  type: 'http_request';
  enabled: boolean;
  profile: HttpRequestProfile;
  createdAt: number;
  updatedAt: number;
}

interface EndpointRow {
  username: string;
  endpoint: string;
  name: string;
  description: string;
  type: string;
  enabled: number;
  profile: string;
  created_at: number;
  updated_at: number;
}

function toRecord(row: EndpointRow): EndpointRecord {
  return {
    username: row.username,
    endpoint: row.endpoint,
    name: row.name,
    description: row.description,
    type: row.type as 'http_request',
    enabled: row.enabled === 1,
    profile: JSON.parse(row.profile) as HttpRequestProfile,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** A user's endpoints in SQLite. Every method is one statement. */
export class EndpointStore {
  private readonly st;

  constructor(db: Db) {
    this.st = {
      insert: db.prepare(
        `INSERT INTO endpoints (username, endpoint, name, description, type, enabled, profile, created_at, updated_at)
         VALUES (@username, @endpoint, @name, @description, @type, @enabled, @profile, @now, @now)`,
      ),
      get: db.prepare('SELECT * FROM endpoints WHERE username = ? AND endpoint = ?'),
      list: db.prepare('SELECT * FROM endpoints WHERE username = ? ORDER BY endpoint LIMIT ? OFFSET ?'),
      count: db.prepare('SELECT count(*) AS n FROM endpoints WHERE username = ?'),
      names: db
        .prepare('SELECT endpoint, name FROM endpoints WHERE username = ? ORDER BY endpoint')
        .raw(true),
      update: db.prepare(
        `UPDATE endpoints SET name = @name, description = @description, enabled = @enabled, profile = @profile,
         updated_at = @now WHERE username = @username AND endpoint = @endpoint`,
      ),
      delete: db.prepare('DELETE FROM endpoints WHERE username = ? AND endpoint = ?'),
    };
  }

  create(e: Omit<EndpointRecord, 'createdAt' | 'updatedAt'>): EndpointRecord {
    try {
      this.st.insert.run({
        username: e.username,
        endpoint: e.endpoint,
        name: e.name,
        description: e.description,
        type: e.type,
        enabled: e.enabled ? 1 : 0,
        profile: JSON.stringify(e.profile),
        now: Date.now(),
      });
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new AlreadyExistsError(`endpoint ${e.endpoint} already exists`);
      }
      throw err;
    }
    return this.get(e.username, e.endpoint) as EndpointRecord;
  }

  get(username: string, endpoint: string): EndpointRecord | undefined {
    const row = this.st.get.get(username, endpoint) as EndpointRow | undefined;
    return row && toRecord(row);
  }

  list(username: string, count: number, index: number): EndpointRecord[] {
    return (this.st.list.all(username, count, index) as EndpointRow[]).map(toRecord);
  }

  count(username: string): number {
    return (this.st.count.get(username) as { n: number }).n;
  }

  /**
   * The user's endpoints (in id order) whose id and name pass `filter`: those at
   * [index, index + count), and how many pass in all (rows read one at a time).
   */
  filter(
    username: string,
    filter: (endpoint: string, name: string) => boolean,
    count: number,
    index: number,
  ): { page: EndpointRecord[]; total: number } {
    const ids: string[] = [];
    let total = 0;
    for (const row of this.st.names.iterate(username) as IterableIterator<[string, string]>) {
      if (!filter(row[0], row[1])) continue;
      if (total >= index && ids.length < count) ids.push(row[0]);
      total++;
    }
    const page = ids.map((id) => this.get(username, id)).filter((e): e is EndpointRecord => e !== undefined);
    return { page, total };
  }

  /** Applies the given changes (the profile is replaced whole); undefined when there is no such endpoint. */
  update(
    username: string,
    endpoint: string,
    patch: { name?: string; description?: string; enabled?: boolean; profile?: HttpRequestProfile },
  ): EndpointRecord | undefined {
    const current = this.get(username, endpoint);
    if (!current) return undefined;
    const info = this.st.update.run({
      username,
      endpoint,
      name: patch.name ?? current.name,
      description: patch.description ?? current.description,
      enabled: (patch.enabled ?? current.enabled) ? 1 : 0,
      profile: JSON.stringify(patch.profile ?? current.profile),
      now: Date.now(),
    });
    return info.changes === 0 ? undefined : this.get(username, endpoint);
  }

  delete(username: string, endpoint: string): boolean {
    return this.st.delete.run(username, endpoint).changes > 0;
  }
}
