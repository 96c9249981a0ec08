#!/usr/bin/env node
/**
 * `npm start` / `iotmp-server`: runs the server until SIGTERM or SIGINT, then shuts down
 * cleanly (devices get DISCONNECT, in-flight calls finish, storage closes) and exits 0.
 * The same program is `iotmp server` in the command line (@iotmp/cli).
 */
import { runServer } from './run.js';

void runServer(process.argv.slice(2));
