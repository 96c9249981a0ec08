import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

/**
 * Schema migrations, applied in order; `user_version` records how many ran. Never edit a
 * migration that has shipped: add a new one.
 */
const MIGRATIONS: string[] = [
  `
  CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE devices (
    username           TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    device             TEXT NOT NULL,
    name               TEXT NOT NULL DEFAULT '',
    description        TEXT NOT NULL DEFAULT '',
    enabled            INTEGER NOT NULL DEFAULT 1,
    credential_hash    TEXT NOT NULL,
    credential_version INTEGER NOT NULL DEFAULT 1,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_connected_ts  INTEGER,
    last_ip            TEXT,
    PRIMARY KEY (username, device)
  ) STRICT;

  CREATE TABLE access_tokens (
    id         TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
  ) STRICT;
  CREATE INDEX access_tokens_user ON access_tokens(username);

  CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) STRICT;
  `,
  // Device properties (JSON values); they go with their device.
  `
  CREATE TABLE device_properties (
    username   TEXT NOT NULL,
    device     TEXT NOT NULL,
    property   TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (username, device, property),
    FOREIGN KEY (username, device) REFERENCES devices(username, device) ON DELETE CASCADE
  ) STRICT;
  `,
  // Endpoints: outbound HTTP requests that users and their devices call by name.
  `
  CREATE TABLE endpoints (
    username    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    endpoint    TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    type        TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    profile     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (username, endpoint)
  ) STRICT;
  `,
  // Data buckets (storage/buckets.ts). Bucket ids are never reused (AUTOINCREMENT): records of
  // a deleted bucket are removed in the background, by id.
  `
  CREATE TABLE buckets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    bucket      TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    enabled     INTEGER NOT NULL DEFAULT 1,
    source      TEXT NOT NULL,
    config      TEXT NOT NULL DEFAULT '{}',
    retention   TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (username, bucket)
  ) STRICT;

  -- Records keyed for reads: one bucket's records in time order; data is JSON text.
  CREATE TABLE bucket_data (
    bucket_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (bucket_id, ts)
  ) STRICT, WITHOUT ROWID;

  -- Acknowledged writes not yet moved into bucket_data: one row per group commit, holding
  -- its records in arrival order (cheap commits).
  CREATE TABLE bucket_log (
    seq     INTEGER PRIMARY KEY,
    records TEXT NOT NULL
  ) STRICT;

  -- Deleted buckets whose records are still being removed.
  CREATE TABLE bucket_purges (bucket_id INTEGER PRIMARY KEY) STRICT;
  CREATE TRIGGER buckets_purge AFTER DELETE ON buckets BEGIN
    INSERT OR IGNORE INTO bucket_purges (bucket_id) VALUES (old.id);
  END;
  `,
  // Access tokens as Thinger.io clients manage them: a key the user chooses (unique per
  // user; existing tokens keep their id as key), a description, an enabled flag, the
  // permissions given in Thinger.io's form ({"allow", "deny"} JSON) and a modification time.
  `
  ALTER TABLE access_tokens ADD COLUMN token TEXT;
  UPDATE access_tokens SET token = id;
  CREATE UNIQUE INDEX access_tokens_user_token ON access_tokens(username, token);
  ALTER TABLE access_tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
  ALTER TABLE access_tokens ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;
  ALTER TABLE access_tokens ADD COLUMN permissions TEXT;
  ALTER TABLE access_tokens ADD COLUMN updated_at INTEGER;
  UPDATE access_tokens SET updated_at = created_at;
  `,
];

export type Db = Database.Database;

/** Opens (creating if needed) the SQLite database in WAL mode and brings its schema up to date. */
export function openDatabase(file: string): Db {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  // One server process owns the database. Exclusive locking, set before WAL is entered, keeps
  // the WAL index in process memory: a read costs no file-lock system calls (~40 µs each on
  // these machines), and a second server on the same data directory fails at once.
  db.pragma('locking_mode = EXCLUSIVE');
  db.pragma('journal_mode = WAL');
  // FULL: an acknowledged write survives a crash of the process and of the machine.
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  const version = db.pragma('user_version', { simple: true }) as number;
  for (let i = version; i < MIGRATIONS.length; i++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[i] as string);
      db.pragma(`user_version = ${i + 1}`);
    })();
  }
  return db;
}
