/**
 * Runs the server as a program (`npm start`, `iotmp-server`, `iotmp server`): settings from
 * `argv` (flags), the environment and a config file; runs until SIGTERM or SIGINT, then shuts
 * down cleanly (devices get DISCONNECT, in-flight calls finish, storage closes) and exits 0.
 * `--help` prints the settings and exits 0; a bad setting exits 2; a failed start exits 1.
 */
import { ConfigError, loadConfig } from './config.js';
import { startServer } from './server.js';

export interface RunServerOptions {
  /** The command name in usage and error messages (default "iotmp-server"). */
  name?: string;
}

export async function runServer(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
  options: RunServerOptions = {},
): Promise<void> {
  const name = options.name ?? 'iotmp-server';
  try {
    await start(argv, env, name);
  } catch (err) {
    console.error(`${name} could not start: ${err instanceof Error ? err.message : String(err)}`);
    if ((err as { code?: string }).code === 'EADDRINUSE')
      console.error(
        'A port is in use: pick others with --http-port, --tcp-port, --tls-port (0 disables TCP/TLS).',
      );
    process.exit(1);
  }
}

async function start(argv: string[], env: NodeJS.ProcessEnv, name: string): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(argv, env);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message.replace(/^Usage: iotmp-server\b/m, `Usage: ${name}`));
      process.exit(err.message.startsWith('Usage:') ? 0 : 2);
    }
    throw err;
  }
  const server = await startServer(config);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    server.log.info({ signal }, 'signal received');
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        server.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
