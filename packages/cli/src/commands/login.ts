/** `iotmp login` and `iotmp logout`. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { ApiClient, DEFAULT_SERVER } from '../api-client.js';
import { explicitServer, globals, store } from '../context.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { prompt, readStdin } from '../input.js';
import { line, printJson } from '../output.js';
import { checkId } from './common.js';

interface LoginOptions {
  user?: string;
  password?: string;
  passwordStdin?: boolean;
}

export function registerLogin(program: Command): void {
  program
    .command('login')
    .summary('log in to a server and remember it')
    .description(
      'Logs in (POST /oauth/token) and stores the server, user, access and refresh tokens in the config directory (see `iotmp --help`). Later commands use them, refreshing the access token when it expires. --ca and --insecure given here are remembered for this server.',
    )
    .option('--user <user>', 'user name (env IOTMP_USER; asked on a terminal, default admin)')
    .option('--password <password>', 'the password (others on this machine may see it: prefer the prompt)')
    .option('--password-stdin', 'read the password from stdin (first line)')
    .action(async (options: LoginOptions, cmd: Command) => {
      const g = globals(cmd);
      const configStore = store();
      const previous = configStore.readLogin();
      const server = explicitServer(g) ?? previous?.server ?? DEFAULT_SERVER;
      if (options.password !== undefined && options.passwordStdin)
        throw usageError('give either --password or --password-stdin, not both');

      let user = options.user ?? (process.env.IOTMP_USER || undefined);
      if (user === undefined) {
        if (!process.stdin.isTTY || options.passwordStdin)
          throw usageError('no user name', 'pass --user NAME (or set IOTMP_USER)');
        user = (await prompt('User [admin]: ')).trim() || 'admin';
      }
      checkId(user, 'user name');

      let password = options.password;
      if (options.passwordStdin) {
        password = (await readStdin()).toString('utf8').split(/\r?\n/)[0];
      } else if (password === undefined) {
        if (!process.stdin.isTTY)
          throw usageError(
            'no password',
            'pass --password-stdin and write it to stdin, or run on a terminal',
          );
        password = await prompt('Password: ', true);
      }
      if (!password) throw usageError('the password is empty');

      const ca = g.ca ?? (process.env.IOTMP_CA || undefined);
      const client = new ApiClient({ server, auth: { kind: 'none' }, user, ca, insecure: g.insecure });
      try {
        const res = await client.request('POST', '/oauth/token', {
          json: { grant_type: 'password', username: user, password },
          auth: false,
          allowError: true,
        });
        if (res.status === 401 || (res.status === 400 && res.bytes.includes('invalid_grant')))
          throw new CliError(
            ExitCode.AUTH,
            `${server} refused the user name or password`,
            'check --user and the password (the first user is "admin": its password was printed when the server first started, or set with IOTMP_ADMIN_PASSWORD)',
            'invalid_grant',
          );
        if (!res.ok) throw client.apiError(res);
        const tokens = res.json as { access_token: string; refresh_token: string; expires_in: number };
        const login = {
          server,
          user,
          access_token: tokens.access_token,
          refresh_token: tokens.refresh_token,
          expiry: Date.now() + tokens.expires_in * 1000,
          ...(ca !== undefined ? { ca: resolve(ca) } : {}),
          ...(g.insecure ? { insecure: true } : {}),
        };
        configStore.saveLogin(login);
        if (g.json) printJson({ server, user, expiry: login.expiry, config: configStore.loginFile });
        else line(`logged in to ${server} as ${user}`);
      } finally {
        await client.close();
      }
    });
}

export function registerLogout(program: Command): void {
  program
    .command('logout')
    .description('forget the stored login (the refresh token then expires unused)')
    .action(async (_options: unknown, cmd: Command) => {
      const g = globals(cmd);
      const configStore = store();
      let login: ReturnType<typeof configStore.readLogin>;
      try {
        login = configStore.readLogin();
      } catch {
        login = undefined; // an unreadable file is removed all the same
      }
      const removed = configStore.removeLogin();
      if (g.json) printJson({ loggedOut: removed, server: login?.server ?? null });
      else line(removed ? `logged out of ${login?.server ?? 'the server'}` : 'not logged in');
    });
}
