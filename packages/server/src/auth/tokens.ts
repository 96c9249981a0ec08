import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import type { AccessTokenRecord, AccountStore, TokenPermissions, TokenScope } from '../storage/accounts.js';
import { hashSecret, verifySecret } from './passwords.js';

/** Who is calling, after the bearer token was checked. */
export interface Principal {
  username: string;
  /** Restrictions of an access token; undefined for a user's own login token (full access). */
  scope: TokenScope | undefined;
  tokenId: string | undefined;
  /** When the access token expires (ms), if it does; undefined for a login token. */
  expiresAt?: number | null | undefined;
}

export class AuthFailure extends Error {
  override name = 'AuthFailure';
  constructor(
    message: string,
    readonly status: 401 | 403,
    readonly code: string,
  ) {
    super(message);
  }
}

/** A new access token: `token` is its key (default: its generated id). */
export interface NewAccessToken {
  token?: string | undefined;
  name: string;
  description?: string | undefined;
  enabled?: boolean | undefined;
  scope: TokenScope;
  permissions?: TokenPermissions | null | undefined;
  /** ms since 1970; null or absent: never. */
  expiresAt?: number | null | undefined;
}

export interface IssuedTokens {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  token_type: 'bearer';
}

const ISSUER = 'iotmp';

/** The claims we use from a verified JWT. */
interface VerifiedPayload {
  sub?: string;
  typ?: unknown;
  jti?: string;
  exp?: number;
}

/** Verified signatures kept (the checks that follow — user, revocation, expiry — run on every request). */
const MAX_VERIFIED = 10_000;

/**
 * Login tokens (JWT, HS256, short-lived) with rotating single-use refresh tokens, and
 * user-created access tokens (JWT naming a stored token, so deleting it revokes it at once).
 */
export class TokenService {
  private readonly secret: Uint8Array;
  /**
   * Tokens whose signature was already verified: checking an HMAC-signed JWT on every API
   * request was a third of the server's time per REST call. Bounded; oldest first out.
   */
  private readonly verified = new Map<string, VerifiedPayload>();

  private remember(token: string, payload: VerifiedPayload): void {
    if (this.verified.size >= MAX_VERIFIED) {
      const oldest = this.verified.keys().next().value;
      if (oldest !== undefined) this.verified.delete(oldest);
    }
    this.verified.set(token, { sub: payload.sub, typ: payload.typ, jti: payload.jti, exp: payload.exp });
  }

  constructor(
    private readonly accounts: AccountStore,
    private readonly accessTtlSeconds: number,
    private readonly refreshTtlSeconds: number,
  ) {
    let stored = accounts.getSetting('jwt_secret');
    if (!stored) {
      stored = randomBytes(32).toString('base64url');
      accounts.setSetting('jwt_secret', stored);
    }
    this.secret = Buffer.from(stored, 'base64url');
  }

  async createUser(username: string, password: string): Promise<void> {
    this.accounts.createUser(username, await hashSecret(password));
  }

  /** grant_type=password */
  async login(username: string, password: string): Promise<IssuedTokens> {
    const user = this.accounts.getUser(username);
    // Same work whether or not the user exists: no timing oracle for user names.
    let ok = false;
    if (user) ok = await verifySecret(password, user.passwordHash);
    else await hashSecret(password);
    if (!ok) throw new AuthFailure('invalid username or password', 401, 'invalid_grant');
    return this.issue(username);
  }

  /** grant_type=refresh_token: the refresh token is used up and a new pair issued. */
  async refresh(refreshToken: string): Promise<IssuedTokens> {
    const taken = this.accounts.takeRefreshToken(hashToken(refreshToken));
    if (!taken || taken.expiresAt < Date.now()) {
      throw new AuthFailure('invalid or expired refresh token', 401, 'invalid_grant');
    }
    if (!this.accounts.getUser(taken.username))
      throw new AuthFailure('user no longer exists', 401, 'invalid_grant');
    return this.issue(taken.username);
  }

  private async issue(username: string): Promise<IssuedTokens> {
    // `usr` as Thinger.io tokens carry it: clients of that API (Node-RED nodes, thinr-cli) read the user from it.
    const access = await new SignJWT({ typ: 'user', usr: username })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(username)
      .setIssuer(ISSUER)
      .setIssuedAt()
      .setJti(randomUUID())
      .setExpirationTime(`${this.accessTtlSeconds}s`)
      .sign(this.secret);
    const refresh = randomBytes(32).toString('base64url');
    this.accounts.addRefreshToken(hashToken(refresh), username, Date.now() + this.refreshTtlSeconds * 1000);
    return {
      access_token: access,
      refresh_token: refresh,
      expires_in: this.accessTtlSeconds,
      token_type: 'bearer',
    };
  }

  /**
   * Creates a named access token; the JWT is returned once and not stored. The JWT names the
   * stored token (`jti`) and carries no expiry of its own: the stored token's expiry,
   * enabled flag and scope are checked on every request, so changing them takes effect at once.
   */
  async createAccessToken(
    username: string,
    input: NewAccessToken,
  ): Promise<{ record: AccessTokenRecord; token: string }> {
    const now = Date.now();
    const id = randomUUID();
    const record: AccessTokenRecord = {
      id,
      username,
      token: input.token ?? id,
      name: input.name,
      description: input.description ?? '',
      enabled: input.enabled ?? true,
      scope: input.scope,
      permissions: input.permissions ?? null,
      createdAt: now,
      updatedAt: now,
      expiresAt: input.expiresAt ?? null,
    };
    this.accounts.createAccessToken(record);
    const jwt = await new SignJWT({ typ: 'token', usr: username })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(username)
      .setIssuer(ISSUER)
      .setIssuedAt(Math.floor(now / 1000))
      .setJti(record.id)
      .sign(this.secret);
    return { record, token: jwt };
  }

  /** Checks a bearer token; throws AuthFailure (401) when missing, invalid, expired or revoked. */
  async verify(token: string | undefined): Promise<Principal> {
    if (!token)
      throw new AuthFailure(
        'missing access token: send "Authorization: Bearer <token>" (get one from POST /oauth/token)',
        401,
        'unauthorized',
      );
    let payload: VerifiedPayload;
    const cached = this.verified.get(token);
    if (cached && (cached.exp === undefined || cached.exp * 1000 > Date.now())) {
      payload = cached;
    } else {
      try {
        ({ payload } = await jwtVerify(token, this.secret, { issuer: ISSUER, algorithms: ['HS256'] }));
      } catch (err) {
        if (err instanceof joseErrors.JWTExpired)
          throw new AuthFailure('access token expired: refresh it or log in again', 401, 'token_expired');
        throw new AuthFailure('invalid access token', 401, 'invalid_token');
      }
      this.remember(token, payload);
    }
    const username = payload.sub;
    if (!username || !this.accounts.getUser(username))
      throw new AuthFailure('invalid access token', 401, 'invalid_token');
    if (payload.typ === 'user') return { username, scope: undefined, tokenId: undefined };
    if (payload.typ === 'token' && payload.jti) {
      const record = this.accounts.getAccessToken(payload.jti);
      if (!record || record.username !== username)
        throw new AuthFailure('access token revoked', 401, 'invalid_token');
      if (record.expiresAt !== null && record.expiresAt < Date.now())
        throw new AuthFailure('access token expired', 401, 'token_expired');
      if (!record.enabled) throw new AuthFailure('access token disabled', 401, 'token_disabled');
      return { username, scope: record.scope, tokenId: record.id, expiresAt: record.expiresAt };
    }
    throw new AuthFailure('invalid access token', 401, 'invalid_token');
  }
}

function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

export type Access = 'read' | 'call' | 'admin';

/**
 * May `principal` act on `username`'s data (optionally one device and resource) with this
 * access? "admin" (managing devices and tokens) needs a login token or an access token with
 * admin access. Throws 403 otherwise.
 */
export function authorize(
  principal: Principal,
  username: string,
  access: Access,
  device?: string,
  resource?: string,
): void {
  if (principal.username !== username)
    throw new AuthFailure("the token does not give access to this user's data", 403, 'forbidden');
  const scope = principal.scope;
  if (!scope || scope.access === 'admin') return;
  if (access === 'admin')
    throw new AuthFailure('this access token cannot manage the account', 403, 'forbidden');
  if (access === 'call' && scope.access !== 'call')
    throw new AuthFailure('this access token is read-only', 403, 'forbidden');
  if (scope.devices) {
    if (device === undefined)
      throw new AuthFailure('this access token is limited to devices', 403, 'forbidden');
    const grant = Object.hasOwn(scope.devices, device)
      ? scope.devices[device]
      : Object.hasOwn(scope.devices, ANY_DEVICE)
        ? scope.devices[ANY_DEVICE]
        : undefined;
    if (!grant) throw new AuthFailure(`this access token does not cover device ${device}`, 403, 'forbidden');
    if (resource !== undefined && grant.resources && !grant.resources.includes(resource)) {
      throw new AuthFailure(`this access token does not cover resource ${resource}`, 403, 'forbidden');
    }
  }
}

/**
 * {@link authorize} for a device's properties: a token limited to some resources of a device
 * (e.g. a Thinger.io device token with `token_resources`) does not reach its properties, which
 * hold the device's configuration.
 */
export function authorizeProperties(
  principal: Principal,
  username: string,
  access: Access,
  device: string,
): void {
  authorize(principal, username, access, device);
  if (visibleResources(principal, device) !== undefined)
    throw new AuthFailure(
      `this access token is limited to some resources of device ${device}: properties need a token for the whole device`,
      403,
      'forbidden',
    );
}

/**
 * The resources of `device` a principal may see, or undefined for all of them (a token without
 * a resource list). Call after {@link authorize} has allowed the device.
 */
export function visibleResources(principal: Principal, device: string): readonly string[] | undefined {
  const devices = principal.scope?.access === 'admin' ? undefined : principal.scope?.devices;
  if (!devices) return undefined;
  const grant = Object.hasOwn(devices, device) ? devices[device] : devices[ANY_DEVICE];
  return grant?.resources;
}

/** The key of a scope's `devices` that grants every device (and nothing else). */
export const ANY_DEVICE = '*';
