/**
 * Which network addresses an endpoint may connect to. Endpoint URLs come from users and their
 * devices; without this check an endpoint could reach the server's own loopback services, the
 * cloud metadata service (169.254.169.254) or the private network behind the server (SSRF).
 *
 * The check runs on the address actually connected to: IP literals before connecting, host
 * names inside the socket's DNS lookup (`guardedLookup`), so the address that was checked is
 * the one the socket uses — a name that resolves to a public address when checked and to a
 * private one a moment later (DNS rebinding) has no second resolution to exploit.
 */
import * as dns from 'node:dns';
import { isIPv4, isIPv6, type LookupFunction } from 'node:net';

/** Why an address is refused, or undefined for a public unicast address. */
export function addressRefusal(address: string): string | undefined {
  const zone = address.indexOf('%');
  const plain = zone >= 0 ? address.slice(0, zone) : address;
  if (isIPv4(plain)) return ipv4Refusal(plain.split('.').map(Number) as [number, number, number, number]);
  if (isIPv6(plain)) return ipv6Refusal(ipv6Words(plain));
  return 'not an IP address';
}

function ipv4Refusal([a, b, c]: [number, number, number, number]): string | undefined {
  if (a === 0) return 'unspecified ("this network", 0.0.0.0/8)';
  if (a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168)) return 'private';
  if (a === 127) return 'loopback';
  if (a === 169 && b === 254) return 'link-local';
  if (a === 100 && b >= 64 && b <= 127) return 'shared address space (carrier-grade NAT)';
  if (a === 192 && b === 0 && c === 0) return 'reserved (IETF protocol assignments)';
  if (
    (a === 192 && b === 0 && c === 2) ||
    (a === 198 && b === 51 && c === 100) ||
    (a === 203 && b === 0 && c === 113)
  )
    return 'documentation';
  if (a === 192 && b === 88 && c === 99) return 'reserved (6to4 relay anycast)';
  if (a === 198 && (b === 18 || b === 19)) return 'benchmarking';
  if (a >= 224 && a <= 239) return 'multicast';
  if (a >= 240) return 'reserved (240.0.0.0/4, broadcast)';
  return undefined;
}

function ipv6Refusal(w: number[]): string | undefined {
  const at = (i: number) => w[i] as number;
  const zeroUpTo = (n: number) => w.slice(0, n).every((x) => x === 0);
  const embedded = (hi: number, lo: number, kind: string) => {
    const reason = ipv4Refusal([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff]);
    return reason === undefined ? undefined : `${reason} (${kind})`;
  };
  if (zeroUpTo(8)) return 'unspecified';
  if (zeroUpTo(7) && at(7) === 1) return 'loopback';
  if (zeroUpTo(5) && at(5) === 0xffff) return embedded(at(6), at(7), 'IPv4-mapped IPv6');
  if (zeroUpTo(6)) return 'reserved (IPv4-compatible IPv6)';
  if (at(0) === 0x64 && at(1) === 0xff9b) {
    if (at(2) === 0 && at(3) === 0 && at(4) === 0 && at(5) === 0) return embedded(at(6), at(7), 'NAT64');
    if (at(2) === 1) return 'private (local-use NAT64)';
  }
  if (at(0) === 0x2002) return embedded(at(1), at(2), '6to4');
  if (at(0) === 0x2001 && at(1) === 0x0db8) return 'documentation';
  if (at(0) === 0x3fff && at(1) < 0x1000) return 'documentation';
  if (at(0) === 0x2001 && at(1) < 0x0200) return 'reserved (IETF protocol assignments, Teredo)';
  if ((at(0) & 0xfe00) === 0xfc00) return 'unique-local';
  if ((at(0) & 0xffc0) === 0xfe80) return 'link-local';
  if ((at(0) & 0xffc0) === 0xfec0) return 'site-local';
  if ((at(0) & 0xff00) === 0xff00) return 'multicast';
  // Only 2000::/3 holds global unicast addresses; the rest is unassigned or special.
  if ((at(0) & 0xe000) !== 0x2000) return 'reserved (outside 2000::/3)';
  return undefined;
}

/** The eight 16-bit words of a valid IPv6 address (without zone). */
function ipv6Words(address: string): number[] {
  let text = address;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (last.includes('.')) {
    const [a, b, c, d] = last.split('.').map(Number) as [number, number, number, number];
    tail.push((a << 8) | b, (c << 8) | d);
    text = `${text.slice(0, lastColon + 1)}0:0`; // two placeholder words, replaced below
  }
  const [head, rest] = text.includes('::') ? (text.split('::') as [string, string]) : [text, undefined];
  const parse = (s: string) => (s === '' ? [] : s.split(':').map((h) => Number.parseInt(h, 16)));
  let words: number[];
  if (rest === undefined) words = parse(head);
  else {
    const left = parse(head);
    const right = parse(rest);
    words = [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
  }
  if (tail.length > 0) words = [...words.slice(0, 8 - 2), ...tail];
  return words;
}

/** An address (from a URL or a DNS answer) the server configuration does not allow endpoints to reach. */
export class AddressRefusedError extends Error {
  override name = 'AddressRefusedError';
  readonly code = 'ADDRESS_REFUSED';
  constructor(
    readonly host: string,
    readonly address: string,
    readonly reason: string,
  ) {
    super(
      host === address
        ? `address ${address} is ${reason}: endpoints may not connect to it`
        : `${host} resolves to ${address}, which is ${reason}: endpoints may not connect to it`,
    );
  }
}

/** Throws AddressRefusedError unless `address` may be connected to. */
export function checkAddress(host: string, address: string, allowPrivate: boolean): void {
  if (allowPrivate) return;
  const reason = addressRefusal(address);
  if (reason !== undefined) throw new AddressRefusedError(host, address, reason);
}

type Resolver = (
  hostname: string,
  options: dns.LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]) => void,
) => void;

/**
 * A `lookup` for net/tls.connect that resolves the name, refuses the connection when any of
 * its addresses is refused (a name with one public and one private address is not trusted
 * either), and hands the checked addresses to the socket.
 */
export function guardedLookup(allowPrivate: boolean, resolver: Resolver = dns.lookup): LookupFunction {
  return (hostname, options, callback) => {
    resolver(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      if (addresses.length === 0) {
        const notFound: NodeJS.ErrnoException = new Error(`${hostname} has no address`);
        notFound.code = 'ENOTFOUND';
        return callback(notFound, []);
      }
      try {
        for (const a of addresses) checkAddress(hostname, a.address, allowPrivate);
      } catch (refused) {
        return callback(refused as NodeJS.ErrnoException, []);
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0] as dns.LookupAddress;
      callback(null, first.address, first.family);
    });
  };
}
