import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

export interface ServerConfig {
  /** Where the database, generated certificate and other state live. */
  dataDir: string;
  /** Bind address for every listener. */
  host: string;
  /** HTTP API, WebSocket API, device WebSocket (/iotmp) and console. */
  httpPort: number;
  /** The same over HTTPS (wss:// for devices), with the TLS certificate; 0 disables. */
  httpsPort: number;
  /** IOTMP over TCP; 0 disables. */
  tcpPort: number;
  /** IOTMP over TLS; 0 disables. */
  tlsPort: number;
  /** PEM files for TLS; when absent a self-signed ECDSA P-256 certificate is generated into dataDir. */
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  /** The user created on first start. */
  adminUser: string;
  /** Its password; when absent on first start, one is generated and printed once. */
  adminPassword: string | undefined;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** How long a REST call waits for a device (ms). */
  deviceCallTimeoutMs: number;
  /** Time allowed to a new device connection to send CONNECT (ms). */
  connectTimeoutMs: number;
  /** Largest IOTMP frame accepted from a device (bytes). */
  maxFrameSize: number;
  /** Largest HTTP request body (bytes). */
  maxBodyBytes: number;
  /** Access token lifetime (s). */
  accessTokenTtlSeconds: number;
  /** Refresh token lifetime (s). */
  refreshTokenTtlSeconds: number;
  /** Time allowed to in-flight work at shutdown (ms). */
  shutdownGraceMs: number;
  /** Endpoints may connect to private, loopback, link-local, … addresses (off: public addresses only). */
  endpointAllowPrivate: boolean;
  /** Time allowed to one endpoint call, connection to last response byte (ms). */
  endpointTimeoutMs: number;
  /** Largest endpoint response body (bytes); larger is an error. */
  endpointMaxResponseBytes: number;
  /** Endpoint calls in progress at once, per user (0: no limit). */
  endpointMaxConcurrent: number;
  /** Endpoint calls per second, per user, sustained (token bucket; 0: no limit). */
  endpointRatePerSecond: number;
  /** Endpoint calls per user in a burst (the token bucket's size). */
  endpointRateBurst: number;
  /** The web console's built files (default: packages/console/dist beside the server package). */
  consoleDir: string | undefined;
}

export const DEFAULT_CONFIG: ServerConfig = {
  dataDir: './data',
  host: '0.0.0.0',
  httpPort: 3000,
  httpsPort: 3443,
  tcpPort: 25204,
  tlsPort: 25206,
  tlsCert: undefined,
  tlsKey: undefined,
  adminUser: 'admin',
  adminPassword: undefined,
  logLevel: 'info',
  deviceCallTimeoutMs: 30_000,
  connectTimeoutMs: 10_000,
  maxFrameSize: 256 * 1024,
  maxBodyBytes: 1024 * 1024,
  accessTokenTtlSeconds: 2 * 3600,
  refreshTokenTtlSeconds: 30 * 24 * 3600,
  shutdownGraceMs: 10_000,
  endpointAllowPrivate: false,
  endpointTimeoutMs: 10_000,
  endpointMaxResponseBytes: 1024 * 1024,
  endpointMaxConcurrent: 8,
  endpointRatePerSecond: 10,
  endpointRateBurst: 20,
  consoleDir: undefined,
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Environment variable → config key. */
const ENV: Record<string, keyof ServerConfig> = {
  IOTMP_DATA_DIR: 'dataDir',
  IOTMP_HOST: 'host',
  IOTMP_HTTP_PORT: 'httpPort',
  IOTMP_HTTPS_PORT: 'httpsPort',
  IOTMP_TCP_PORT: 'tcpPort',
  IOTMP_TLS_PORT: 'tlsPort',
  IOTMP_TLS_CERT: 'tlsCert',
  IOTMP_TLS_KEY: 'tlsKey',
  IOTMP_ADMIN_USER: 'adminUser',
  IOTMP_ADMIN_PASSWORD: 'adminPassword',
  IOTMP_LOG_LEVEL: 'logLevel',
  IOTMP_DEVICE_CALL_TIMEOUT_MS: 'deviceCallTimeoutMs',
  IOTMP_CONNECT_TIMEOUT_MS: 'connectTimeoutMs',
  IOTMP_MAX_FRAME_SIZE: 'maxFrameSize',
  IOTMP_MAX_BODY_BYTES: 'maxBodyBytes',
  IOTMP_ACCESS_TOKEN_TTL: 'accessTokenTtlSeconds',
  IOTMP_REFRESH_TOKEN_TTL: 'refreshTokenTtlSeconds',
  IOTMP_SHUTDOWN_GRACE_MS: 'shutdownGraceMs',
  IOTMP_ENDPOINTS_ALLOW_PRIVATE: 'endpointAllowPrivate',
  IOTMP_ENDPOINTS_TIMEOUT_MS: 'endpointTimeoutMs',
  IOTMP_ENDPOINTS_MAX_RESPONSE_BYTES: 'endpointMaxResponseBytes',
  IOTMP_ENDPOINTS_MAX_CONCURRENT: 'endpointMaxConcurrent',
  IOTMP_ENDPOINTS_RATE: 'endpointRatePerSecond',
  IOTMP_ENDPOINTS_BURST: 'endpointRateBurst',
  IOTMP_CONSOLE_DIR: 'consoleDir',
};

const PORTS = new Set<keyof ServerConfig>(['httpPort', 'httpsPort', 'tcpPort', 'tlsPort']);
const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The command-line flag of each setting: --data-dir, --http-port, … */
export const FLAGS: Record<string, keyof ServerConfig> = Object.fromEntries(
  (Object.keys(DEFAULT_CONFIG) as Array<keyof ServerConfig>).map((k) => [`--${kebab(k)}`, k]),
);

function coerce(key: keyof ServerConfig, raw: unknown, source: string): unknown {
  const def = DEFAULT_CONFIG[key];
  if (typeof def === 'boolean') {
    if (typeof raw === 'boolean') return raw;
    const text = typeof raw === 'string' ? raw.trim().toLowerCase() : '';
    if (['true', '1', 'yes', 'on'].includes(text)) return true;
    if (['false', '0', 'no', 'off'].includes(text)) return false;
    throw new ConfigError(`${source}: ${key} must be true or false, got ${JSON.stringify(raw)}`);
  }
  if (typeof def === 'number' || PORTS.has(key)) {
    const n =
      typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : Number.NaN;
    if (!Number.isInteger(n) || n < 0)
      throw new ConfigError(`${source}: ${key} must be a non-negative integer, got ${JSON.stringify(raw)}`);
    if (PORTS.has(key) && n > 65535)
      throw new ConfigError(`${source}: ${key} must be a port number (0–65535, 0 disables), got ${n}`);
    return n;
  }
  if (typeof raw !== 'string')
    throw new ConfigError(`${source}: ${key} must be a string, got ${JSON.stringify(raw)}`);
  if (key === 'logLevel' && !LEVELS.has(raw)) {
    throw new ConfigError(
      `${source}: logLevel must be one of ${[...LEVELS].join(', ')}, got ${JSON.stringify(raw)}`,
    );
  }
  return raw;
}

/**
 * Builds the configuration: defaults, then a JSON file (`--config file` or IOTMP_CONFIG),
 * then environment variables, then command-line flags. Every value is validated; an error
 * names its source and what is expected.
 */
export function loadConfig(argv: string[] = [], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const config: Record<string, unknown> = { ...DEFAULT_CONFIG };
  const flags: Array<[keyof ServerConfig, string]> = [];
  let configFile = env.IOTMP_CONFIG;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [name, inline] = arg.includes('=')
      ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)]
      : [arg, undefined];
    if (name === '--help' || name === '-h') throw new ConfigError(usage());
    const value = inline ?? argv[++i];
    if (value === undefined) throw new ConfigError(`${name} needs a value\n\n${usage()}`);
    if (name === '--config') configFile = value;
    else {
      const key = FLAGS[name];
      if (!key) throw new ConfigError(`unknown option ${name}\n\n${usage()}`);
      flags.push([key, value]);
    }
  }
  if (configFile) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(configFile, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configFile}: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new ConfigError(`config file ${configFile} must hold a JSON object`);
    }
    for (const [k, v] of Object.entries(parsed)) {
      if (!(k in DEFAULT_CONFIG))
        throw new ConfigError(
          `config file ${configFile}: unknown setting "${k}" (known: ${Object.keys(DEFAULT_CONFIG).join(', ')})`,
        );
      config[k] = coerce(k as keyof ServerConfig, v, `config file ${configFile}`);
    }
  }
  for (const [name, key] of Object.entries(ENV)) {
    const v = env[name];
    if (v !== undefined && v !== '') config[key] = coerce(key, v, `environment variable ${name}`);
  }
  for (const [key, value] of flags) config[key] = coerce(key, value, `option --${kebab(key)}`);
  const result = config as unknown as ServerConfig;
  result.dataDir = resolve(result.dataDir);
  if (result.consoleDir !== undefined) result.consoleDir = resolve(result.consoleDir);
  if ((result.tlsCert === undefined) !== (result.tlsKey === undefined)) {
    throw new ConfigError(
      'tlsCert and tlsKey go together: give both PEM files, or neither to generate a self-signed certificate',
    );
  }
  return result;
}

export function usage(): string {
  const lines = Object.entries(FLAGS).map(([flag, key]) => {
    const env = Object.entries(ENV).find(([, k]) => k === key)?.[0];
    const def = DEFAULT_CONFIG[key];
    return `  ${flag.padEnd(28)} ${env ? `(${env})` : ''}${def !== undefined ? ` default ${JSON.stringify(def)}` : ''}`;
  });
  return [
    'Usage: iotmp-server [--config file.json] [options]',
    '',
    'Options (environment variable in parentheses):',
    ...lines,
  ].join('\n');
}
