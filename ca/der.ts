// Minimal DER writer and TLV reader for the bulk issuance hot path (CSR in, leaf out), where a generic ASN.1 schema costs too much.
//
// @peculiar/x509 builds and re-parses an object tree per certificate (about 4 ms per leaf here); the leaf
// profile is fixed, so its TBSCertificate is assembled from pre-encoded pieces instead (tens of µs).
// CA certificates and CRLs are still built with @peculiar/x509, loaded on demand (x509.ts); reading certificates
// (the issuing CA in home.ts, display in the CLI) uses node:crypto.X509Certificate.

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const

function lengthBytes (n: number): number[] {
  if (n < 0x80) return [n]
  const out: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff)
  return [0x80 | out.length, ...out]
}

/** Size of a whole TLV (tag, length, contents) whose contents are n bytes. */
export function tlvLength (n: number): number {
  return (n < 0x80 ? 2 : n < 0x100 ? 3 : n < 0x10000 ? 4 : n < 0x1000000 ? 5 : 6) + n
}

/** One TLV from a tag and already-encoded contents. */
export function tlv (tag: number, ...contents: Uint8Array[]): Uint8Array {
  let len = 0
  for (const c of contents) len += c.length
  const head = lengthBytes(len)
  const out = new Uint8Array(1 + head.length + len)
  out[0] = tag
  out.set(head, 1)
  let at = 1 + head.length
  for (const c of contents) { out.set(c, at); at += c.length }
  return out
}

export const seq = (...contents: Uint8Array[]): Uint8Array => tlv(TAG.SEQUENCE, ...contents)
export const set = (...contents: Uint8Array[]): Uint8Array => tlv(TAG.SET, ...contents)

export function oid (dotted: string): Uint8Array {
  const parts = dotted.split('.').map((p) => Number(p))
  const [a = 0, b = 0, ...rest] = parts
  const bytes: number[] = [a * 40 + b]
  for (const n of rest) {
    const chunk: number[] = [n & 0x7f]
    for (let v = Math.floor(n / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f))
    bytes.push(...chunk)
  }
  return tlv(TAG.OID, new Uint8Array(bytes))
}

/** INTEGER from big-endian magnitude bytes (adds the sign byte when the high bit is set). */
export function integerFromBytes (bytes: Uint8Array): Uint8Array {
  let start = 0
  while (start < bytes.length - 1 && bytes[start] === 0) start++
  const body = bytes.subarray(start)
  return (body[0] ?? 0) >= 0x80 ? tlv(TAG.INTEGER, new Uint8Array([0]), body) : tlv(TAG.INTEGER, body)
}

export function utf8String (text: string): Uint8Array {
  return tlv(TAG.UTF8_STRING, Buffer.from(text, 'utf8'))
}

export function octetString (bytes: Uint8Array): Uint8Array {
  return tlv(TAG.OCTET_STRING, bytes)
}

export function bitString (bytes: Uint8Array): Uint8Array {
  return tlv(TAG.BIT_STRING, new Uint8Array([0]), bytes)
}

export function explicit (n: number, inner: Uint8Array): Uint8Array {
  return tlv(0xa0 | n, inner)
}

const pad2 = (n: number): string => String(n).padStart(2, '0')

/** RFC 5280 section 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, always seconds and Z. */
export function time (d: Date): Uint8Array {
  const y = d.getUTCFullYear()
  const rest = `${pad2(d.getUTCMonth() + 1)}${pad2(d.getUTCDate())}${pad2(d.getUTCHours())}${pad2(d.getUTCMinutes())}${pad2(d.getUTCSeconds())}Z`
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(pad2(y % 100) + rest, 'ascii'))
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(String(y).padStart(4, '0') + rest, 'ascii'))
}

/** A TLV as read: tag, where its contents lie, and the whole encoding. */
export interface Tlv {
  tag: number
  /** Contents (value) only. */
  value: Uint8Array
  /** Tag + length + value. */
  raw: Uint8Array
}

export class DerError extends Error {}

/** Reads one DER TLV at `at` (definite lengths only, as DER requires). */
export function readTlv (buf: Uint8Array, at = 0): Tlv {
  if (at + 2 > buf.length) throw new DerError('truncated')
  const tag = buf[at] as number
  if ((tag & 0x1f) === 0x1f) throw new DerError('multi-byte tags are not used here')
  let len = buf[at + 1] as number
  let head = 2
  if (len === 0x80) throw new DerError('indefinite length is not DER')
  if (len > 0x80) {
    const n = len & 0x7f
    if (n > 4 || at + 2 + n > buf.length) throw new DerError('bad length')
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + (buf[at + 2 + i] as number)
    head += n
  }
  const end = at + head + len
  if (end > buf.length) throw new DerError('truncated')
  return { tag, value: buf.subarray(at + head, end), raw: buf.subarray(at, end) }
}

/** The TLVs directly inside a constructed value. */
export function children (value: Uint8Array): Tlv[] {
  const out: Tlv[] = []
  for (let at = 0; at < value.length;) {
    const t = readTlv(value, at)
    out.push(t)
    at += t.raw.length
  }
  return out
}

/** Dotted form of an OBJECT IDENTIFIER's contents. */
export function readOid (value: Uint8Array): string {
  if (value.length === 0) throw new DerError('empty OID')
  const first = value[0] as number
  const parts = [Math.min(2, Math.floor(first / 40)), first - Math.min(2, Math.floor(first / 40)) * 40]
  let n = 0
  for (let i = 1; i < value.length; i++) {
    const b = value[i] as number
    n = n * 128 + (b & 0x7f)
    if ((b & 0x80) === 0) { parts.push(n); n = 0 }
  }
  return parts.join('.')
}

function digits (s: string, from: number, n: number): number {
  let v = 0
  for (let i = from; i < from + n; i++) {
    const c = s.charCodeAt(i) - 48
    if (c < 0 || c > 9) throw new DerError('time: not a digit')
    v = v * 10 + c
  }
  return v
}

/** RFC 5280 section 4.1.2.5: UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ, nothing looser (DerError). */
export function readTime (t: Tlv | undefined): Date {
  if (t === undefined) throw new DerError('validity: missing time')
  const s = Buffer.from(t.value).toString('latin1')
  let year: number
  let at: number
  if (t.tag === TAG.UTC_TIME && s.length === 13) {
    const yy = digits(s, 0, 2)
    year = yy < 50 ? 2000 + yy : 1900 + yy
    at = 2
  } else if (t.tag === TAG.GENERALIZED_TIME && s.length === 15) {
    year = digits(s, 0, 4)
    at = 4
  } else {
    throw new DerError('validity: not a UTCTime or GeneralizedTime in DER form')
  }
  if (s[at + 10] !== 'Z') throw new DerError('validity: time is not in UTC (Z)')
  const month = digits(s, at, 2)
  const day = digits(s, at + 2, 2)
  const hour = digits(s, at + 4, 2)
  const minute = digits(s, at + 6, 2)
  const second = digits(s, at + 8, 2)
  const d = new Date(Date.UTC(year, month - 1, day, hour, minute, second))
  // Date.UTC rolls 31 February over into March; DER time must name a real instant.
  if (d.getUTCFullYear() !== year || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day || d.getUTCHours() !== hour ||
    d.getUTCMinutes() !== minute || d.getUTCSeconds() !== second) throw new DerError('validity: not a calendar time')
  return d
}

/** Byte-for-byte equality of two DER values (or any byte strings). */
export function bytesEqual (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}

/**
 * Writes DER back to front into one buffer: the last child first, then each constructed value's header once its
 * contents are in place, so every length is known when it is written and no intermediate arrays are made (the leaf
 * hot path builds a TBSCertificate per row). Writing past the start throws instead of corrupting.
 */
export class DerBackWriter {
  /** Start of what has been written so far; everything from here to the end of buf is the output. */
  pos: number

  constructor (readonly buf: Buffer) {
    this.pos = buf.length
  }

  private room (n: number): void {
    if (n > this.pos) throw new DerError('DER output buffer too small')
  }

  /** Already-encoded bytes (whole TLVs, or contents). */
  bytes (b: Uint8Array): void {
    this.room(b.length)
    this.pos -= b.length
    this.buf.set(b, this.pos)
  }

  /** A string's UTF-8 bytes (contents of a string TLV). */
  text (s: string): void {
    const n = Buffer.byteLength(s, 'utf8')
    this.room(n)
    this.pos -= n
    this.buf.write(s, this.pos, n, 'utf8')
  }

  /** Makes everything written since `end` (an earlier pos) the contents of one TLV with this tag. */
  wrap (tag: number, end: number): void {
    let len = end - this.pos
    this.room(tlvLength(len) - len)
    if (len < 0x80) {
      this.buf[--this.pos] = len
    } else {
      let n = 0
      for (; len > 0; len = Math.floor(len / 256)) { this.buf[--this.pos] = len & 0xff; n++ }
      this.buf[--this.pos] = 0x80 | n
    }
    this.buf[--this.pos] = tag
  }
}
