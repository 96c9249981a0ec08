/** `iotmp server`: the server of `npm start`, with all its settings (`iotmp server --help`). */
import type { Command } from 'commander';

export function registerServer(program: Command): void {
  program
    .command('server')
    .summary('run the server (the same as `npm start`)')
    .description(
      'Runs the IOTMP server until SIGTERM or Ctrl-C, with the settings of `npm start`: flags, IOTMP_* environment variables and --config file.json. `iotmp server --help` lists them.',
    )
    .argument('[settings...]', 'server flags, e.g. --http-port 3000 --data-dir ./data')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async (_settings: string[], _options: unknown, cmd: Command) => {
      // Loaded only here: the other commands do not need the server's dependencies.
      const { runServer } = await import('@iotmp/server');
      await runServer(cmd.args, process.env, { name: 'iotmp server' });
      // The server runs until a signal; runServer then exits the process.
      await new Promise<never>(() => {});
    });
}
