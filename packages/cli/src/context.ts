/**
 * Global options (--server, --token, --ca, --insecure, --json) and the API client they give.
 * Precedence: flag, then environment (IOTMP_SERVER, IOTMP_TOKEN, IOTMP_CA, IOTMP_INSECURE),
 * then the stored login, then http://localhost:3000.
 */
import type { Command } from 'commander';
import { ApiClient, type Auth, DEFAULT_SERVER, normalizeServer, tokenSubject } from './api-client.js';
import { ConfigStore, configDir } from './config-store.js';

export interface GlobalOptions {
  server?: string;
  token?: string;
  ca?: string;
  insecure?: boolean;
  json?: boolean;
}

export function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

export function store(env: NodeJS.ProcessEnv = process.env): ConfigStore {
  return new ConfigStore(configDir(env));
}

function envFlag(value: string | undefined): boolean {
  return value !== undefined && ['1', 'true', 'yes', 'on'].includes(value.toLowerCase());
}

/** The server URL the options name (without looking at the stored login). */
export function explicitServer(
  options: GlobalOptions,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  const raw = options.server ?? (env.IOTMP_SERVER || undefined);
  return raw === undefined ? undefined : normalizeServer(raw);
}

export function createClient(options: GlobalOptions, env: NodeJS.ProcessEnv = process.env): ApiClient {
  const configStore = store(env);
  const login = configStore.readLogin();
  const server = explicitServer(options, env) ?? login?.server ?? DEFAULT_SERVER;
  const sameServer = login !== undefined && login.server === server;
  const token = options.token ?? (env.IOTMP_TOKEN || undefined);
  let auth: Auth = { kind: 'none' };
  let user: string | undefined;
  if (token !== undefined) {
    auth = { kind: 'token', token };
    user = tokenSubject(token);
  } else if (login && sameServer) {
    auth = { kind: 'login', login, store: configStore };
    user = login.user;
  }
  const ca = options.ca ?? (env.IOTMP_CA || undefined) ?? (sameServer ? login?.ca : undefined);
  const insecure =
    options.insecure === true || envFlag(env.IOTMP_INSECURE) || (sameServer && login?.insecure === true);
  return new ApiClient({ server, auth, user, ca, insecure });
}

/** Runs `work` with a client for the command's options, closing it afterwards. */
export async function withClient<T>(
  cmd: Command,
  work: (client: ApiClient, json: boolean) => Promise<T>,
): Promise<T> {
  const options = globals(cmd);
  const client = createClient(options);
  try {
    return await work(client, options.json === true);
  } finally {
    await client.close();
  }
}
