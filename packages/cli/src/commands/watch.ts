/**
 * Shared by `iotmp stream` and `iotmp events`: reads a WebSocket of the API until Ctrl-C,
 * `--count` data frames, or the server closes it.
 */
import type { WebSocket } from 'undici';
import { CliError, ExitCode } from '../errors.js';

export interface ServerFrame {
  resource?: string;
  event?: string;
  signal: 'start' | 'stop' | 'data' | 'error';
  payload?: unknown;
}

export interface WatchOptions {
  /** Stop after this many data frames. */
  count?: number | undefined;
  onFrame(frame: ServerFrame): void;
  /** The exit code of an error frame (the socket is then closed). */
  errorExit?(frame: ServerFrame): CliError | undefined;
}

/** Resolves when done (count reached, Ctrl-C); rejects with a CliError when the socket fails. */
export function watchSocket(ws: WebSocket, options: WatchOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let data = 0;
    let finished = false;
    const finish = (err?: CliError) => {
      if (finished) return;
      finished = true;
      process.off('SIGINT', onSigint);
      process.off('SIGTERM', onSigint);
      ws.close();
      if (err) reject(err);
      else resolve();
    };
    const onSigint = () => finish();
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigint);
    ws.addEventListener('message', (event) => {
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(event.data)) as ServerFrame;
      } catch {
        return;
      }
      options.onFrame(frame);
      if (frame.signal === 'error') {
        const err = options.errorExit?.(frame);
        if (err) return finish(err);
      }
      if (frame.signal === 'data' && options.count !== undefined && ++data >= options.count) finish();
    });
    ws.addEventListener('close', (event) => {
      if (finished) return;
      finish(
        new CliError(
          ExitCode.FAILURE,
          `the server closed the connection (${event.code}${event.reason ? `: ${event.reason}` : ''})`,
        ),
      );
    });
  });
}

export function errorText(payload: unknown): string {
  const p = payload as { code?: unknown; message?: unknown } | undefined;
  if (p && typeof p.message === 'string')
    return typeof p.code === 'string' ? `${p.message} (${p.code})` : p.message;
  return JSON.stringify(payload);
}
