import type { TokenScope } from '../storage/accounts.js';
import { ANY_DEVICE } from './tokens.js';

/**
 * Thinger.io's access-token permissions (`allow` and `deny` trees, as thinr-cli and the
 * Thinger.io console send them) as this server's token scopes. A tree is
 * `{"<ResourceType>": {"<id>" | "*": "*" | ["<Action>", …]}}`. Only what a scope can hold
 * exactly, or with less access than asked, is taken; anything else is refused (never more
 * access than asked):
 *
 * - `{"*": {"*": "*"}}`: everything, account management included ("admin").
 * - `{"*": {"*": ["Read…", "List…"]}}`: read everything ("read").
 * - `{"Device": {"<device>" | "*": "*" | [actions]}}`: those devices (or every device, and
 *   nothing else); actions `Read…`/`List…` read, `AccessDeviceResources` (or "*") also calls.
 * - `deny`: absent or empty.
 */
export class PermissionError extends Error {
  override name = 'PermissionError';
}

const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;
const READ_ACTION = /^(Read|List)[A-Za-z0-9_]{0,60}$/;
/** Actions beyond reading that a "call" scope gives on devices. */
const DEVICE_CALL_ACTIONS = new Set(['AccessDeviceResources']);
const MAX_DEVICES = 1000;

type Level = 'read' | 'call' | 'all';

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** What a leaf ("*", an action, or a list of actions) asks for, on devices or on everything. */
function level(leaf: unknown, where: string, onDevices: boolean): Level {
  const actions = typeof leaf === 'string' ? [leaf] : leaf;
  if (!Array.isArray(actions) || actions.length === 0)
    throw new PermissionError(`${where} must be "*" or a non-empty array of action names`);
  let result: Level = 'read';
  for (const action of actions) {
    if (typeof action !== 'string')
      throw new PermissionError(
        `${where}: actions must be strings (nested action objects are not supported)`,
      );
    if (action === '*') return 'all';
    if (READ_ACTION.test(action)) continue;
    if (onDevices && DEVICE_CALL_ACTIONS.has(action)) {
      result = 'call';
      continue;
    }
    throw new PermissionError(
      `${where}: action "${action}" is not supported here (use "*", Read…/List… actions${onDevices ? ', or AccessDeviceResources' : ''})`,
    );
  }
  return result;
}

/** The scope granting what `allow` asks for (see above); throws PermissionError otherwise. */
export function scopeFromPermissions(allow: unknown, deny: unknown): TokenScope {
  if (deny !== undefined && deny !== null && !(isPlainObject(deny) && Object.keys(deny).length === 0))
    throw new PermissionError('deny rules are not supported: give only what the token may do, in "allow"');
  if (!isPlainObject(allow)) throw new PermissionError('allow must be an object keyed by resource type');
  const types = Object.keys(allow);
  if (types.length !== 1 || (types[0] !== '*' && types[0] !== 'Device'))
    throw new PermissionError(
      'allow must grant either everything ({"*": {"*": …}}) or devices ({"Device": {…}}); other resource types, or several, are not supported',
    );
  const type = types[0] as '*' | 'Device';
  const byId = allow[type];
  if (!isPlainObject(byId) || Object.keys(byId).length === 0)
    throw new PermissionError(`allow.${type} must be an object keyed by id (or "*")`);
  if (type === '*') {
    const ids = Object.keys(byId);
    if (ids.length !== 1 || ids[0] !== '*')
      throw new PermissionError('allow["*"] takes only the id "*" (any resource)');
    const l = level(byId['*'], 'allow["*"]["*"]', false);
    return { access: l === 'all' ? 'admin' : 'read' };
  }
  const ids = Object.keys(byId);
  if (ids.length > MAX_DEVICES)
    throw new PermissionError(`allow.Device lists more than ${MAX_DEVICES} devices`);
  let access: 'read' | 'call' | undefined;
  const devices: Record<string, { resources?: string[] }> = {};
  for (const id of ids) {
    if (id !== ANY_DEVICE && !DEVICE_ID.test(id))
      throw new PermissionError(`allow.Device: "${id}" is not a device id (or "*")`);
    const l = level(byId[id], `allow.Device["${id}"]`, true);
    const a = l === 'read' ? 'read' : 'call';
    if (access !== undefined && access !== a)
      throw new PermissionError(
        'allow.Device: every device must have the same access (read, or read and call)',
      );
    access = a;
    Object.defineProperty(devices, id, { value: {}, enumerable: true, writable: true, configurable: true });
  }
  return { access: access ?? 'read', devices };
}
