// The revoked serials a node knows, with their records, packed into a few large byte arrays instead of an object each.
import { randomBytes } from 'node:crypto'
import { REVOCATION_REASONS, type RevocationReason } from '../common/ids.js'
import { parsePackedRecord, packRecord } from '../store/packed-record.js'
import type { PackedRevocationSink, Revocation } from '../store/types.js'

// A million records as a Map of objects cost ~330 bytes each on the V8 heap (object, four sliced strings and the
// packed string they point into, the map entry) and made the load mostly garbage collection; a lookup crossed three or
// four cache lines scattered over that heap. Here one record is ~45 bytes in an arena (serial as nibbles, reason as a
// byte, times as 48-bit ms) plus ~12 bytes of open-addressing table, details are decoded only when asked for, and a
// first lookup reads one table line and, on a hit, one arena line; repeated ones are answered from a small Map.
//
// Entry: [serial length][serial, two hex digits a byte][reason code][revokedAt ms, 6 bytes][notAfter ms, 6 bytes]
//        [id length][id, ASCII]
// A record that would not come back exactly from that form (an unknown reason, a time not in toISOString form,
// a non-ASCII id, upper-case hex, ...) is kept as an object in a side map; both answer every question alike.

const CHUNK_BITS = 20
/** Arena chunk size; an entry (at most 1 + 128 + 13 + 1 + 255 bytes) never spans two. */
const CHUNK = 1 << CHUNK_BITS
const CHUNK_MASK = CHUNK - 1
/** Table offsets are uint32 (offset + 1, 0 for empty). */
const MAX_ARENA = 0xffff_0000
const MAX_LOAD = 0.7
/** Serials whose answer is remembered: more than the sessions one node keeps busy (~50 bytes each). */
const RECENT_MAX = 1 << 18
const SPACE = 0x20
const ISO_LENGTH = 24
/** The latest time the 6-byte form holds in the 4-digit-year ISO form: 9999-12-31T23:59:59.999Z. */
const MAX_MS = 253_402_300_799_999

const REASON_CODE = new Map<string, number>(Object.entries(REVOCATION_REASONS))
const REASON_BY_CODE: (RevocationReason | undefined)[] = []
for (const [name, code] of Object.entries(REVOCATION_REASONS)) REASON_BY_CODE[code] = name as RevocationReason
/** Reason names as bytes by length (at most two share one), to recognise one without making a string of it. */
const REASONS_BY_LENGTH: { bytes: Buffer, code: number }[][] = []
for (const [name, code] of REASON_CODE) (REASONS_BY_LENGTH[name.length] ??= []).push({ bytes: Buffer.from(name, 'latin1'), code })
const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

/** Seeded per process, so nobody can pick serials that all land in one probe run. */
const SEED = randomBytes(4).readInt32LE(0)

/** murmur3_32 over a serial already packed two hex digits a byte: four bytes a round, eight digits. */
function hashPacked (b: Uint8Array, at: number, digitCount: number): number {
  const n = (digitCount + 1) >>> 1
  let h = SEED ^ digitCount
  let i = at
  for (const end = at + (n & ~3); i < end; i += 4) {
    h = round(h, (b[i] as number) | ((b[i + 1] as number) << 8) | ((b[i + 2] as number) << 16) | ((b[i + 3] as number) << 24))
  }
  let k = 0
  for (let shift = 0; i < at + n; i++, shift += 8) k |= (b[i] as number) << shift
  if ((n & 3) !== 0) h ^= Math.imul(rotl(Math.imul(k, 0xcc9e_2d51), 15), 0x1b87_3593)
  h ^= n
  h ^= h >>> 16
  h = Math.imul(h, 0x85eb_ca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2_ae35)
  h ^= h >>> 16
  return h >>> 0
}

function round (h: number, k: number): number {
  h ^= Math.imul(rotl(Math.imul(k, 0xcc9e_2d51), 15), 0x1b87_3593)
  return (Math.imul(rotl(h, 13), 5) + 0xe654_6b64) | 0
}

function rotl (x: number, r: number): number {
  return (x << r) | (x >>> (32 - r))
}

/** Value of a lower-case hex digit, else -1 (upper case too: only canonical serials are packed). */
function hexValue (c: number): number {
  return c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : -1
}

function digits (b: Uint8Array, at: number, n: number): number {
  let v = 0
  for (let i = at; i < at + n; i++) {
    const d = (b[i] as number) - 0x30
    if (d < 0 || d > 9) return -1
    v = v * 10 + d
  }
  return v
}

/**
 * ms of a time written exactly as Date.prototype.toISOString writes it (YYYY-MM-DDTHH:MM:SS.sssZ, years 1970-9999),
 * else -1: only such a time comes back as the same string from its ms.
 */
function isoMs (b: Uint8Array, at: number): number {
  if (b[at + 4] !== 0x2d || b[at + 7] !== 0x2d || b[at + 10] !== 0x54 || b[at + 13] !== 0x3a || b[at + 16] !== 0x3a || b[at + 19] !== 0x2e || b[at + 23] !== 0x5a) return -1
  const y = digits(b, at, 4)
  const mo = digits(b, at + 5, 2)
  const d = digits(b, at + 8, 2)
  const h = digits(b, at + 11, 2)
  const mi = digits(b, at + 14, 2)
  const s = digits(b, at + 17, 2)
  const ms = digits(b, at + 20, 3)
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 59 || ms < 0) return -1
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)
  if (d > (DAYS[mo - 1] as number) + (mo === 2 && leap ? 1 : 0)) return -1
  return (((daysFromCivil(y, mo, d) * 24 + h) * 60 + mi) * 60 + s) * 1000 + ms
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil; Date.UTC, without the call). */
function daysFromCivil (y: number, m: number, d: number): number {
  const yy = m <= 2 ? y - 1 : y
  const era = Math.floor(yy / 400)
  const yoe = yy - era * 400
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146_097 + doe - 719_468
}

function writeMs (chunk: Uint8Array, at: number, ms: number): void {
  const hi = Math.floor(ms / 0x1_0000_0000)
  const lo = ms >>> 0
  chunk[at] = hi >>> 8
  chunk[at + 1] = hi & 0xff
  chunk[at + 2] = lo >>> 24
  chunk[at + 3] = (lo >>> 16) & 0xff
  chunk[at + 4] = (lo >>> 8) & 0xff
  chunk[at + 5] = lo & 0xff
}

function readMs (chunk: Uint8Array, at: number): number {
  const hi = ((chunk[at] as number) << 8) | (chunk[at + 1] as number)
  const lo = (((chunk[at + 2] as number) << 24) | ((chunk[at + 3] as number) << 16) | ((chunk[at + 4] as number) << 8) | (chunk[at + 5] as number)) >>> 0
  return hi * 0x1_0000_0000 + lo
}

/** Reason code of the name at b[start, end), or -1. */
function reasonCode (b: Uint8Array, start: number, end: number): number {
  const candidates = REASONS_BY_LENGTH[end - start]
  if (candidates === undefined) return -1
  for (let c = 0; c < candidates.length; c++) {
    const { bytes, code } = candidates[c] as { bytes: Buffer, code: number }
    let i = 0
    while (i < bytes.length && bytes[i] === b[start + i]) i++
    if (i === bytes.length) return code
  }
  return -1
}

/** Serial → revocation record; records are only ever added. */
export class RevokedSet implements PackedRevocationSink {
  readonly #chunks: Buffer[] = []
  /** Next free byte in the last chunk. */
  #pos = CHUNK
  /** Pairs (hash, arena offset + 1), 0 offset for an empty slot; linear probing. */
  #table = new Uint32Array(2 * 1024)
  #mask = 1023
  #count = 0
  /** Records the packed form cannot hold exactly, as they came. */
  readonly #odd = new Map<string, Revocation>()
  /** A looked-up serial, packed. */
  readonly #query = new Uint8Array(128)
  /** Reused to pack a record that arrives as an object. */
  readonly #scratch = Buffer.allocUnsafe(1024)
  /**
   * Recent answers by serial. The per-message path asks about the same connected serials over and over; a Map
   * answers from the hash V8 keeps in the string, where the table hashes every digit and reads an arena line.
   * Emptied on every add: an answer changes only from false to true, when a record arrives.
   */
  readonly #recent = new Map<string, boolean>()

  get size (): number {
    return this.#count + this.#odd.size
  }

  has (serial: string): boolean {
    const known = this.#recent.get(serial)
    if (known !== undefined) return known
    const answer = this.#find(serial) !== 0 || (this.#odd.size !== 0 && this.#odd.has(serial))
    if (this.#recent.size >= RECENT_MAX) this.#recent.clear()
    this.#recent.set(serial, answer)
    return answer
  }

  /** The record, decoded now (callers are audit lines and enforcement, not the connect path). */
  get (serial: string): Revocation | undefined {
    const at = this.#find(serial)
    if (at === 0) return this.#odd.get(serial)
    const chunk = this.#chunks[(at - 1) >>> CHUNK_BITS] as Buffer
    const p = ((at - 1) & CHUNK_MASK) + 1 + (((chunk[(at - 1) & CHUNK_MASK] as number) + 1) >>> 1)
    return {
      serial,
      id: chunk.toString('latin1', p + 14, p + 14 + (chunk[p + 13] as number)),
      reason: REASON_BY_CODE[chunk[p] as number] as RevocationReason,
      revokedAt: new Date(readMs(chunk, p + 1)).toISOString(),
      notAfter: new Date(readMs(chunk, p + 7)).toISOString(),
    }
  }

  /** Adds a record unless its serial is already known (the first record stays). Returns whether it was new. */
  add (revocation: Revocation): boolean {
    const packed = packRecord(revocation)
    // Only an all-ASCII record has as many bytes as characters; anything else is kept as it is.
    if (packed === null || packed.length > this.#scratch.length || !/^[\x21-\x7e ]*$/.test(packed)) return this.#addOdd(revocation)
    const n = this.#scratch.write(packed, 0, 'latin1')
    return this.#insert(this.#scratch, n, revocation)
  }

  addPacked (record: Uint8Array): void {
    this.#insert(record, record.length, undefined)
  }

  /** Packs the record in b[0, end) into the arena, or keeps it (as `original`, else parsed) in the side map. */
  #insert (b: Uint8Array, end: number, original: Revocation | undefined): boolean {
    let s1 = 0
    while (s1 < end && b[s1] !== SPACE) s1++
    let s2 = s1 + 1
    while (s2 < end && b[s2] !== SPACE) s2++
    let s3 = s2 + 1
    while (s3 < end && b[s3] !== SPACE) s3++
    // Two ISO times of fixed length close the record.
    const s4 = s3 + 1 + ISO_LENGTH
    const idLength = s2 - s1 - 1
    if (s1 < 1 || s1 > 255 || idLength > 255 || s4 + 1 + ISO_LENGTH !== end || b[s3] !== SPACE || b[s4] !== SPACE) return this.#insertOdd(b, end, original)
    for (let i = s1 + 1; i < s2; i++) if ((b[i] as number) > 0x7e) return this.#insertOdd(b, end, original)
    const code = reasonCode(b, s2 + 1, s3)
    const revokedAt = isoMs(b, s3 + 1)
    const notAfter = isoMs(b, s4 + 1)
    if (code < 0 || revokedAt < 0 || notAfter < 0 || revokedAt > MAX_MS || notAfter > MAX_MS) return this.#insertOdd(b, end, original)

    // Pack the serial in place at the end of the arena; the entry is kept only if the serial is new.
    const size = 1 + ((s1 + 1) >>> 1) + 13 + 1 + idLength
    if (this.#pos + size > CHUNK) {
      if ((this.#chunks.length + 1) * CHUNK > MAX_ARENA) throw new Error(`revoked set: more than ${MAX_ARENA} bytes of records`)
      this.#chunks.push(Buffer.alloc(CHUNK))
      this.#pos = 0
    }
    const chunk = this.#chunks[this.#chunks.length - 1] as Buffer
    let p = this.#pos
    chunk[p] = s1
    if (!packDigits(b, s1, chunk, p + 1)) return this.#insertOdd(b, end, original)
    const h = hashPacked(chunk, p + 1, s1)
    const slot = this.#slot(h, chunk, p + 1, s1)
    if (this.#table[2 * slot + 1] !== 0) return false
    if (this.#odd.size !== 0 && this.#odd.has(Buffer.from(b.buffer, b.byteOffset, s1).toString('latin1'))) return false

    p += 1 + ((s1 + 1) >>> 1)
    chunk[p] = code
    writeMs(chunk, p + 1, revokedAt)
    writeMs(chunk, p + 7, notAfter)
    chunk[p + 13] = idLength
    p += 14
    for (let k = s1 + 1; k < s2; k++) chunk[p++] = b[k] as number
    this.#table[2 * slot] = h
    this.#table[2 * slot + 1] = (this.#chunks.length - 1) * CHUNK + this.#pos + 1
    this.#pos = p
    this.#count++
    if (this.#recent.size !== 0) this.#recent.clear()
    if (this.#count > (this.#mask + 1) * MAX_LOAD) this.#grow()
    return true
  }

  /** The side map's path: anything the packed form cannot hold exactly, and malformed records (which throw). */
  #insertOdd (b: Uint8Array, end: number, original: Revocation | undefined): boolean {
    return this.#addOdd(original ?? parsePackedRecord(Buffer.from(b.buffer, b.byteOffset, end).toString('utf8')))
  }

  #addOdd (revocation: Revocation): boolean {
    if (this.#find(revocation.serial) !== 0 || this.#odd.has(revocation.serial)) return false
    this.#odd.set(revocation.serial, revocation)
    this.#recent.clear()
    return true
  }

  /** arena offset + 1 of the entry for `serial`, 0 when there is none. */
  #find (serial: string): number {
    const n = serial.length
    if (n === 0 || n > 255) return 0
    const q = this.#query
    let byte = 0
    for (let k = 0; k < n; k++) {
      const v = hexValue(serial.charCodeAt(k))
      if (v < 0) return 0
      byte = (byte << 4) | v
      if ((k & 1) === 1) q[k >>> 1] = byte & 0xff
    }
    if ((n & 1) === 1) q[n >>> 1] = (byte & 15) << 4
    return this.#table[2 * this.#slot(hashPacked(q, 0, n), q, 0, n) + 1] as number
  }

  /** The slot holding the packed serial src[at, ...) of `digits` digits, or the empty slot where it would go. */
  #slot (h: number, src: Uint8Array, at: number, digits: number): number {
    const table = this.#table
    const bytes = (digits + 1) >>> 1
    for (let i = h & this.#mask; ; i = (i + 1) & this.#mask) {
      const entry = table[2 * i + 1] as number
      if (entry === 0) return i
      if (table[2 * i] !== h) continue
      const chunk = this.#chunks[(entry - 1) >>> CHUNK_BITS] as Buffer
      const p = (entry - 1) & CHUNK_MASK
      if (chunk[p] !== digits) continue
      let k = 0
      while (k < bytes && chunk[p + 1 + k] === src[at + k]) k++
      if (k === bytes) return i
    }
  }

  #grow (): void {
    const old = this.#table
    const capacity = 2 * (this.#mask + 1)
    const table = new Uint32Array(2 * capacity)
    const mask = capacity - 1
    for (let j = 0; j < old.length; j += 2) {
      const at = old[j + 1] as number
      if (at === 0) continue
      const h = old[j] as number
      let i = h & mask
      while (table[2 * i + 1] !== 0) i = (i + 1) & mask
      table[2 * i] = h
      table[2 * i + 1] = at
    }
    this.#table = table
    this.#mask = mask
  }
}

/** Packs the lower-case hex digits b[0, n) two a byte into out[at, ...); false if one is not such a digit. */
function packDigits (b: Uint8Array, n: number, out: Uint8Array, at: number): boolean {
  for (let k = 0; k < n; k += 2) {
    const hi = hexValue(b[k] as number)
    const lo = k + 1 < n ? hexValue(b[k + 1] as number) : 0
    if (hi < 0 || lo < 0) return false
    out[at + (k >>> 1)] = (hi << 4) | lo
  }
  return true
}
