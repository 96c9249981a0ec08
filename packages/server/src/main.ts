#!/usr/bin/env node
/**
 * `npm start` / `iotmp-server`: runs the server until SIGTERM or SIGINT, then shuts down
 * cleanly (devices get DISCONNECT, in-flight calls finish, storage closes) and exits 0.
 */
import { ConfigError, loadConfig } from './config.js';
import { startServer } from './server.js';

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
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

main().catch((err: unknown) => {
  console.error(`iotmp-server could not start: ${err instanceof Error ? err.message : String(err)}`);
  if ((err as { code?: string }).code === 'EADDRINUSE')
    console.error(
      'A port is in use: pick others with --http-port, --tcp-port, --tls-port (0 disables TCP/TLS).',
    );
  process.exit(1);
});
