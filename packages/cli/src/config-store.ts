/**
 * What the command line remembers between runs, in the user's config directory
 * (`$IOTMP_CONFIG_DIR`, else `$XDG_CONFIG_HOME/iotmp`, else `~/.config/iotmp`):
 * `config.json` holds the login (server, user, tokens), readable by its owner only (0600);
 * `simulator.key` holds the secret `iotmp simulate` derives device credentials from.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { CliError, ExitCode } from './errors.js';

export interface StoredLogin {
  /** Server base URL, e.g. http://localhost:3000 (no trailing slash). */
  server: string;
  user: string;
  access_token: string;
  refresh_token: string;
  /** When the access token expires (ms since 1970). */
  expiry: number;
  /** A CA certificate file trusted for this server (from `login --ca`). */
  ca?: string;
  /** Certificate checks off for this server (from `login --insecure`). */
  insecure?: boolean;
}

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.IOTMP_CONFIG_DIR) return env.IOTMP_CONFIG_DIR;
  const base = env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'iotmp');
}

function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/** Writes a file readable by its owner only, replacing it in one step (no torn file). */
function writePrivate(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600); // the mode option does not apply when the file existed
  renameSync(tmp, file);
}

function isLogin(v: unknown): v is StoredLogin {
  const o = v as Record<string, unknown>;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof o.server === 'string' &&
    typeof o.user === 'string' &&
    typeof o.access_token === 'string' &&
    typeof o.refresh_token === 'string' &&
    typeof o.expiry === 'number'
  );
}

export class ConfigStore {
  constructor(readonly dir: string = configDir()) {}

  get loginFile(): string {
    return join(this.dir, 'config.json');
  }

  /** The stored login, or undefined when there is none. */
  readLogin(): StoredLogin | undefined {
    let text: string;
    try {
      text = readFileSync(this.loginFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CliError(ExitCode.FAILURE, `cannot read ${this.loginFile}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!isLogin(parsed))
      throw new CliError(
        ExitCode.AUTH,
        `${this.loginFile} is not a login file this version understands`,
        'run `iotmp login` again (or `iotmp logout` to remove it)',
      );
    return parsed;
  }

  saveLogin(login: StoredLogin): void {
    ensureDir(this.dir);
    writePrivate(this.loginFile, `${JSON.stringify(login, null, 2)}\n`);
  }

  /** Removes the stored login; false when there was none. */
  removeLogin(): boolean {
    try {
      rmSync(this.loginFile);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** The simulator's secret (created on first use): device credentials derive from it. */
  simulatorSecret(): Buffer {
    const file = join(this.dir, 'simulator.key');
    try {
      const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64url');
      if (key.length >= 16) return key;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const key = randomBytes(32);
    ensureDir(this.dir);
    writePrivate(file, `${key.toString('base64url')}\n`);
    return key;
  }
}
