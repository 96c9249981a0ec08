import { hash, randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * Password and device-credential hashing with scrypt (memory-hard). Stored as
 * `scrypt$N$r$p$salt$hash` (base64url), so parameters can be raised later without breaking
 * existing hashes.
 */
const PARAMS = { N: 2 ** 15, r: 8, p: 1 } as const;
const KEY_LENGTH = 32;

function scryptAsync(secret: string, salt: Buffer, keylen: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(secret, salt, KEY_LENGTH, { ...PARAMS, maxmem: 64 * 1024 * 1024 });
  return `scrypt$${PARAMS.N}$${PARAMS.r}$${PARAMS.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [, n, r, p, saltText, hashText] = parts as [string, string, string, string, string, string];
  const expected = Buffer.from(hashText, 'base64url');
  const key = await scryptAsync(secret, Buffer.from(saltText, 'base64url'), expected.length, {
    N: Number(n),
    r: Number(r),
    p: Number(p),
    maxmem: 64 * 1024 * 1024,
  });
  return key.length === expected.length && timingSafeEqual(key, expected);
}

/**
 * Remembers credentials that verified recently, so that a reconnect storm does not cost one
 * scrypt per device. Entries are keyed by a keyed hash (SHA-256 over a per-process random
 * secret, the device and the credential; one-shot `crypto.hash`, a fifth of an HMAC's cost) of
 * the device and credential, carry the stored credential hash they were checked against (a
 * credential change, or a deleted and re-created device, has a new salted hash
 * invalidates them) and expire after `ttlMs`. Nothing in it can be reversed to a credential.
 */
export class VerifierCache {
  private readonly key = randomBytes(32).toString('base64url');
  private readonly entries = new Map<string, { stored: string; expires: number }>();

  constructor(
    private readonly ttlMs = 10 * 60_000,
    private readonly maxEntries = 200_000,
  ) {}

  private digest(id: string, credential: string): string {
    // A cache key, not a MAC: nothing is authenticated with it, so SHA-256 of secret ‖ data
    // (length extension gives no preimage) is enough.
    return hash('sha256', `${this.key}\0${id}\0${credential}`, 'base64url');
  }

  has(id: string, credential: string, stored: string, now = Date.now()): boolean {
    const k = this.digest(id, credential);
    const e = this.entries.get(k);
    if (!e) return false;
    if (e.stored !== stored || e.expires < now) {
      this.entries.delete(k);
      return false;
    }
    return true;
  }

  add(id: string, credential: string, stored: string, now = Date.now()): void {
    if (this.entries.size >= this.maxEntries) {
      // Drop the oldest insertion (Map keeps insertion order).
      const first = this.entries.keys().next().value;
      if (first !== undefined) this.entries.delete(first);
    }
    this.entries.set(this.digest(id, credential), { stored, expires: now + this.ttlMs });
  }

  get size(): number {
    return this.entries.size;
  }
}
