#!/usr/bin/env node
/**
 * `iotmp`: the command line of the IOTMP server. Runs the server, logs in, manages devices,
 * tokens, properties and buckets, calls and streams device resources, follows events, and
 * simulates fleets of devices. Exit codes: see errors.ts (and `iotmp --help`).
 */
import { Command, CommanderError } from 'commander';
import { registerBuckets } from './commands/buckets.js';
import { registerCall } from './commands/call.js';
import { registerDescribe } from './commands/describe.js';
import { registerDevices } from './commands/devices.js';
import { registerEvents } from './commands/events.js';
import { registerLogin, registerLogout } from './commands/login.js';
import { registerProperties } from './commands/properties.js';
import { registerServer } from './commands/server.js';
import { registerSimulate } from './commands/simulate.js';
import { registerStream } from './commands/stream.js';
import { registerTokens } from './commands/tokens.js';
import { CliError, EXIT_CODE_HELP, ExitCode } from './errors.js';

const VERSION = '0.1.0';

function buildProgram(): Command {
  const program = new Command('iotmp');
  program
    .description(
      'IOTMP server command line: run the server, manage devices and tokens, call and simulate devices',
    )
    .version(VERSION, '-V', 'print the version')
    .option(
      '--server <url>',
      "server URL (env IOTMP_SERVER; default: the login's server, else http://localhost:3000)",
    )
    .option('--token <token>', 'an access token to use instead of the stored login (env IOTMP_TOKEN)')
    .option('--ca <file>', 'trust this PEM certificate for HTTPS (env IOTMP_CA), e.g. a self-signed one')
    .option('--insecure', 'do not check the HTTPS certificate (env IOTMP_INSECURE=1)')
    .option('--json', 'print JSON instead of tables (for scripts)')
    .exitOverride()
    .showHelpAfterError('(add --help for usage)')
    .addHelpText(
      'after',
      `
Login: \`iotmp login\` stores the server, user and tokens in $IOTMP_CONFIG_DIR, else
$XDG_CONFIG_HOME/iotmp, else ~/.config/iotmp (config.json, mode 0600); expired access
tokens are refreshed with the stored refresh token.

${EXIT_CODE_HELP}`,
    );
  registerServer(program);
  registerLogin(program);
  registerLogout(program);
  registerDevices(program);
  registerTokens(program);
  registerDescribe(program);
  registerCall(program);
  registerStream(program);
  registerProperties(program);
  registerBuckets(program);
  registerEvents(program);
  registerSimulate(program);
  return program;
}

/** Exits once stdout and stderr have been written out. */
function exit(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // Commander printed the message (or the help) already; its errors are usage errors.
    return err.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE;
  }
  if (err instanceof CliError) {
    process.stderr.write(`error: ${err.message}\n${err.hint ? `  ${err.hint}\n` : ''}`);
    return err.exitCode;
  }
  process.stderr.write(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return ExitCode.FAILURE;
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
    exit(ExitCode.OK);
  } catch (err) {
    exit(report(err));
  }
}

void main();
