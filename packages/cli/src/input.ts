/** Command input: JSON from an argument, a file (`@file`) or stdin (`-`); prompts on a terminal. */
import { readFileSync } from 'node:fs';
import { usageError } from './errors.js';

/** Most bytes read from stdin or a file for one request (the server refuses larger bodies anyway). */
const MAX_INPUT_BYTES = 64 * 1024 * 1024;

export async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > MAX_INPUT_BYTES) throw usageError(`stdin holds more than ${MAX_INPUT_BYTES} bytes`);
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

/** The bytes of `json | @file | -`. */
export async function readInputBytes(arg: string): Promise<Buffer> {
  if (arg === '-') return readStdin();
  if (arg.startsWith('@')) {
    const file = arg.slice(1);
    try {
      return readFileSync(file);
    } catch (err) {
      throw usageError(`cannot read ${file}: ${(err as Error).message}`);
    }
  }
  return Buffer.from(arg, 'utf8');
}

/** Parses `json | @file | -` as JSON; a clear usage error when it is not. */
export async function readJsonInput(arg: string, what = 'input'): Promise<unknown> {
  const text = (await readInputBytes(arg)).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    const source = arg === '-' ? 'stdin' : arg.startsWith('@') ? arg.slice(1) : 'the argument';
    throw usageError(
      `${what} from ${source} is not JSON: ${(err as Error).message}`,
      `give JSON, e.g. '{"on": true}', 42 or '"text"' (quotes included), @file.json or - for stdin`,
    );
  }
}

/** Asks a question on the terminal (stderr); with `hidden`, typed characters are not shown. */
export function prompt(question: string, hidden = false): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY)
    return Promise.reject(usageError(`cannot ask "${question.trim()}": stdin is not a terminal`));
  process.stderr.write(question);
  return new Promise((resolve, reject) => {
    let answer = '';
    stdin.setRawMode(true);
    stdin.resume();
    stdin.setEncoding('utf8');
    const done = (result: string | Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') return done(answer);
        if (ch === '\u0003') return done(usageError('cancelled'));
        if (ch === '\u007f' || ch === '\b') {
          if (answer.length > 0) {
            answer = answer.slice(0, -1);
            if (!hidden) process.stderr.write('\b \b');
          }
          continue;
        }
        if (ch < ' ') continue;
        answer += ch;
        if (!hidden) process.stderr.write(ch);
      }
    };
    stdin.on('data', onData);
  });
}
