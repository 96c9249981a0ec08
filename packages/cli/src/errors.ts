/**
 * Exit codes of every command (documented in `iotmp --help`) and the error that carries one.
 * A CliError's message says what went wrong; its hint says what to do next.
 */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  AUTH: 3,
  NOT_FOUND: 4,
  UNREACHABLE: 5,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export const EXIT_CODE_HELP = `Exit codes:
  0  success
  1  failure (the server refused the request, the device answered with an error, …)
  2  usage error (unknown command or option, bad argument)
  3  not logged in, or authentication refused (run \`iotmp login\`)
  4  not found (device, resource, property, bucket, token)
  5  cannot reach the server (not running, wrong --server, TLS certificate not trusted)`;

export class CliError extends Error {
  override name = 'CliError';
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    /** What to do about it (printed after the message). */
    readonly hint?: string,
    /** The API's error code, when the server answered with one. */
    readonly code?: string,
  ) {
    super(message);
  }
}

export function usageError(message: string, hint?: string): CliError {
  return new CliError(ExitCode.USAGE, message, hint);
}
