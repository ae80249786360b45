// The certificate inventory and revocation store in Redis: what a cluster of broker nodes shares and follows.
import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'
import { oneLine, ZtError } from '../common/errors.js'
import { canonicalSerial, checkId, checkKind, checkReason, checkSerial, isKind, type RevocationReason } from '../common/ids.js'
import { parsePackedRecord } from './packed-record.js'
import { redisKeys, type RedisKeys } from './redis-keys.js'
import type {
  CertListFilter, CertListing, CertStatus, CertStore, FeedEntry, IssuedCert, PackedRevocationSink, Revocation, RevokeResult, StoredCrl,
} from './types.js'

export interface RedisStoreOptions {
  /** redis://[user:pass@]host:port[/db] or rediss:// for TLS. */
  url: string
  /** @default 'azt:' */
  prefix?: string
  logger?: Logger
  /**
   * How long to wait for a TCP connection to Redis.
   * @default 2000
   */
  connectTimeoutMs?: number
  /**
   * Non-blocking commands that get no reply within this long reject (a silently dead link must not hang a revoke).
   * @default 5000
   */
  commandTimeoutMs?: number
  /**
   * Resolve openRedisStore only once Redis answered (reject with ZT_STORE_UNAVAILABLE otherwise). With false the
   * store is returned at once and keeps reconnecting in the background; commands fail fast until it is up.
   * @default true
   */
  waitForConnection?: boolean
}

/** Entries fetched per round trip when loading or listing: bounded replies, few round trips. */
const PAGE = 10_000

/** Extra time a blocking feed read may take past its BLOCK before the link is presumed dead. */
const BLOCK_GRACE_MS = 1_000

const CURSOR_RE = /^\d+-\d+$/
const START_CURSOR = '0-0'

// Atomic revoke: every serial must have been issued (else nothing is written); an already-revoked serial keeps its
// first record and gets no feed entry. Returns {'ok', created1, record1, created2, record2, ...} or {'unknown', serial}.
// KEYS: revoked hash, feed stream, then one cert hash per serial. ARGV: reason, revokedAt, then the serials.
const REVOKE_LUA = `
local n = #ARGV - 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    return {'unknown', ARGV[i + 2]}
  end
end
local out = {'ok'}
for i = 1, n do
  local serial = ARGV[i + 2]
  local existing = redis.call('HGET', KEYS[1], serial)
  if existing then
    out[#out + 1] = '0'
    out[#out + 1] = existing
  else
    local c = redis.call('HMGET', KEYS[i + 2], 'id', 'notAfter')
    local rec = serial .. ' ' .. c[1] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. c[2]
    redis.call('HSET', KEYS[1], serial, rec)
    redis.call('XADD', KEYS[2], '*', 'r', rec)
    out[#out + 1] = '1'
    out[#out + 1] = rec
  end
end
return out
`

// Records a batch of issued certificates in one atomic step (a MULTI of 3 commands per certificate costs several
// times more client-side). A serial already in the inventory, or twice in the batch, is never overwritten: every
// serial is checked first and then nothing is written. Returns {'ok'} or {'duplicate', serial}.
// KEYS: the certs zset, then per certificate its cert hash and its id set.
// ARGV: per certificate serial, id, kind, groups (JSON), notBefore, notAfter, notBefore in ms.
const RECORD_LUA = `
local n = (#KEYS - 1) / 2
local seen = {}
for i = 0, n - 1 do
  local serial = ARGV[i * 7 + 1]
  if seen[serial] or redis.call('EXISTS', KEYS[2 + i * 2]) == 1 then
    return {'duplicate', serial}
  end
  seen[serial] = true
end
for i = 0, n - 1 do
  local a = i * 7
  redis.call('HSET', KEYS[2 + i * 2], 'id', ARGV[a + 2], 'kind', ARGV[a + 3], 'groups', ARGV[a + 4], 'notBefore', ARGV[a + 5], 'notAfter', ARGV[a + 6])
  redis.call('ZADD', KEYS[1], ARGV[a + 7], ARGV[a + 1])
  redis.call('SADD', KEYS[3 + i * 2], ARGV[a + 1])
end
return {'ok'}
`

// Keep only a CRL whose number is above the stored one. Numbers can exceed 2^53 (RFC 5280 allows 20 octets),
// so they travel as canonical decimal strings and compare by length, then lexically.
// KEYS: crl hash. ARGV: number (decimal, no leading zeros), der. Returns 1 when stored.
const SAVE_CRL_LUA = `
local cur = redis.call('HGET', KEYS[1], 'number')
if cur then
  local a, b = ARGV[1], cur
  if #a < #b or (#a == #b and a <= b) then return 0 end
end
redis.call('HSET', KEYS[1], 'number', ARGV[1], 'der', ARGV[2])
return 1
`

interface ScriptCommands {
  aztRecord (numKeys: number, ...args: string[]): Promise<string[]>
  aztRevoke (numKeys: number, ...args: string[]): Promise<string[]>
  aztSaveCrl (numKeys: number, ...args: (string | Buffer)[]): Promise<number>
}

const CERT_FIELDS = ['id', 'kind', 'groups', 'notBefore', 'notAfter'] as const

/** Inventory order: notBefore, then serial, both as strings (the order the file store gives, so the two agree). */
function compareListing (a: IssuedCert, b: IssuedCert): number {
  if (a.notBefore !== b.notBefore) return a.notBefore < b.notBefore ? -1 : 1
  return a.serial < b.serial ? -1 : a.serial > b.serial ? 1 : 0
}

function parseCert (serial: string, fields: (string | null)[]): IssuedCert | null {
  const [id, kind, groups, notBefore, notAfter] = fields
  if (id == null || kind == null || groups == null || notBefore == null || notAfter == null || !isKind(kind)) return null
  return { serial, id, kind, groups: JSON.parse(groups) as string[], notBefore, notAfter }
}

/** The record of a feed entry: its one field 'r'. */
function parseFeedFields (id: string, fields: string[]): Revocation {
  if (fields.length !== 2 || fields[0] !== 'r') throw new Error(`malformed feed entry ${id}: expected one field 'r'`)
  return parsePackedRecord(fields[1] as string)
}

type StreamEntry = [id: string, fields: string[]]
type BufferEntry = [id: Buffer, fields: Buffer[]]

export class RedisCertStore implements CertStore {
  readonly backend = 'redis' as const
  readonly keys: RedisKeys
  readonly #cmd: Redis
  /** XREAD BLOCK holds its connection for the whole wait, so feed reads get one of their own. */
  readonly #blocking: Redis
  readonly #logger: Logger | undefined
  readonly #url: string
  /** Feed reads run one at a time on the blocking connection; each one's dead-link timer starts when it is sent. */
  #feedChain: Promise<unknown> = Promise.resolve()
  #closed = false

  constructor (options: RedisStoreOptions) {
    this.keys = redisKeys(options.prefix)
    this.#logger = options.logger
    this.#url = redactUrl(options.url)
    const base: RedisOptions = {
      // Fail fast: a revoke or a feed read must error, not wait in a queue, while Redis is away.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: options.connectTimeoutMs ?? 2_000,
      // Keep reconnecting for as long as the process lives; the mirror's staleness clock bounds the harm.
      retryStrategy: (times) => Math.min(times * 100, 1_000),
      keepAlive: 10_000,
      // A command in flight when the link dropped has already failed (or will, on commandTimeout) for its caller;
      // replaying it after reconnect would revoke behind the caller's back or hold the feed connection with a stale read.
      autoResendUnfulfilledCommands: false,
      lazyConnect: true,
    }
    this.#cmd = new Redis(options.url, { ...base, commandTimeout: options.commandTimeoutMs ?? 5_000, connectionName: 'azt-store' })
    // No commandTimeout (it would fire during BLOCK) and no ioredis blockingTimeout: that one resolves a timed-out
    // XREAD with null, which would read as "nothing new" and falsely confirm currency. readFeed keeps its own timer.
    this.#blocking = new Redis(options.url, { ...base, connectionName: 'azt-store-feed' })
    this.#cmd.defineCommand('aztRecord', { lua: RECORD_LUA })
    this.#cmd.defineCommand('aztRevoke', { lua: REVOKE_LUA })
    this.#cmd.defineCommand('aztSaveCrl', { lua: SAVE_CRL_LUA })
    this.#watch(this.#cmd, 'command')
    this.#watch(this.#blocking, 'feed')
  }

  /** Logs transitions only: ioredis reports every failed reconnect, which would flood the log during an outage. */
  #watch (client: Redis, role: string): void {
    let down = false
    client.on('error', (err: Error) => {
      if (!down && !this.#closed) this.#logger?.warn({ event: 'store.unavailable', backend: 'redis', role, url: this.#url, err: oneLine(err) }, 'redis store: connection lost')
      down = true
    })
    client.on('ready', () => {
      if (down) this.#logger?.info({ event: 'store.reconnected', backend: 'redis', role, url: this.#url }, 'redis store: connection restored')
      down = false
    })
  }

  /** Connects both connections; rejects with ZT_STORE_UNAVAILABLE if Redis does not answer. */
  async connect (): Promise<void> {
    await this.#run('connect', async () => {
      await Promise.all([this.#cmd.connect(), this.#blocking.connect()])
      await this.#cmd.ping()
    })
  }

  /** Starts connecting without waiting; commands fail with ZT_STORE_UNAVAILABLE until Redis answers. */
  connectInBackground (): void {
    this.#cmd.connect().catch(() => {})
    this.#blocking.connect().catch(() => {})
  }

  async #run<T> (op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new ZtError('ZT_STORE_UNAVAILABLE', `redis store: ${op}: the store is closed`, { op })
    try {
      return await fn()
    } catch (err) {
      if (err instanceof ZtError) throw err
      throw new ZtError('ZT_STORE_UNAVAILABLE', `redis store: ${op}: ${oneLine(err)} (${this.#url})`, { op, url: this.#url }, { cause: err })
    }
  }

  get #scripts (): ScriptCommands {
    return this.#cmd as unknown as ScriptCommands
  }

  async recordIssued (certs: readonly IssuedCert[]): Promise<void> {
    if (certs.length === 0) return
    // Revocation records are space-separated: the id alphabet (and a real timestamp) keeps them parseable.
    const rows = certs.map((c) => {
      checkId(c.id, 'record issued')
      checkKind(c.kind, 'record issued')
      if (Number.isNaN(Date.parse(c.notBefore)) || Number.isNaN(Date.parse(c.notAfter)) || /\s/.test(c.notBefore + c.notAfter)) {
        throw new ZtError('ZT_BAD_ARGUMENT', `record issued: serial ${c.serial} has an invalid validity period`, { serial: c.serial })
      }
      return { ...c, serial: checkSerial(c.serial, 'record issued') }
    })
    const reply = await this.#run('record issued', async () => {
      const keys: string[] = [this.keys.certs]
      const args: string[] = []
      for (const c of rows) {
        keys.push(this.keys.cert(c.serial), this.keys.id(c.id))
        args.push(c.serial, c.id, c.kind, JSON.stringify(c.groups), c.notBefore, c.notAfter, String(Date.parse(c.notBefore)))
      }
      return await this.#scripts.aztRecord(keys.length, ...keys, ...args)
    })
    if (reply[0] === 'duplicate') {
      const serial = reply[1] ?? ''
      throw new ZtError('ZT_BAD_ARGUMENT', `record issued: serial ${serial} is already in the inventory`, { serial })
    }
  }

  async getIssued (serial: string): Promise<IssuedCert | null> {
    const s = canonicalSerial(serial)
    if (s === null) return null
    return await this.#run('get issued', async () => parseCert(s, await this.#cmd.hmget(this.keys.cert(s), ...CERT_FIELDS)))
  }

  async list (filter: CertListFilter = {}, now: Date = new Date()): Promise<CertListing[]> {
    return await this.#run('list', async () => {
      const serials = filter.id !== undefined
        ? await this.#cmd.smembers(this.keys.id(filter.id))
        : await this.#allSerials()
      const out: CertListing[] = []
      const nowMs = now.getTime()
      for (let i = 0; i < serials.length; i += PAGE) {
        // One round trip per page: every cert hash and the page's revocation records together.
        const page = serials.slice(i, i + PAGE)
        const p = this.#cmd.pipeline()
        for (const s of page) p.hmget(this.keys.cert(s), ...CERT_FIELDS)
        p.hmget(this.keys.revoked, ...page)
        const results = await p.exec()
        if (results === null) throw new Error('pipeline aborted')
        const revs = results[page.length]
        if (revs === undefined || revs[0] !== null) throw (revs?.[0] ?? new Error('pipeline reply missing')) as Error
        const revJson = revs[1] as (string | null)[]
        page.forEach((serial, k) => {
          const [err, fields] = results[k] ?? [new Error('pipeline reply missing'), null]
          if (err !== null) throw err
          const cert = parseCert(serial, fields as (string | null)[])
          if (cert === null) return
          const json = revJson[k]
          const rev = json == null ? null : parsePackedRecord(json)
          const status: CertStatus = rev !== null ? 'revoked' : Date.parse(cert.notAfter) <= nowMs ? 'expired' : 'active'
          if (filter.status !== undefined && filter.status !== status) return
          const listing: CertListing = { ...cert, status }
          if (rev !== null) { listing.revokedAt = rev.revokedAt; listing.reason = rev.reason }
          out.push(listing)
        })
      }
      return out.sort(compareListing)
    })
  }

  async #allSerials (): Promise<string[]> {
    const all: string[] = []
    for (let start = 0; ; start += PAGE) {
      const page = await this.#cmd.zrange(this.keys.certs, start, start + PAGE - 1)
      all.push(...page)
      if (page.length < PAGE) return all
    }
  }

  async revoke (serials: readonly string[], reason: RevocationReason, at: Date = new Date()): Promise<RevokeResult[]> {
    checkReason(reason, 'revoke')
    const list = serials.map((s) => checkSerial(s, 'revoke'))
    if (list.length === 0) return []
    const revokedAt = at.toISOString()
    const reply = await this.#run('revoke', async () => await this.#scripts.aztRevoke(
      2 + list.length,
      this.keys.revoked, this.keys.revocations, ...list.map((s) => this.keys.cert(s)),
      reason, revokedAt, ...list,
    ))
    if (reply[0] === 'unknown') {
      const serial = reply[1] ?? ''
      throw new ZtError('ZT_UNKNOWN_SERIAL', `revoke: serial ${serial} was not issued by this CA; nothing was revoked`, { serial })
    }
    const results: RevokeResult[] = []
    for (let k = 1; k + 1 < reply.length; k += 2) {
      results.push({ created: reply[k] === '1', revocation: parsePackedRecord(reply[k + 1] as string) })
    }
    return results
  }

  async getRevocation (serial: string): Promise<Revocation | null> {
    const s = canonicalSerial(serial)
    if (s === null) return null
    const json = await this.#run('get revocation', async () => await this.#cmd.hget(this.keys.revoked, s))
    return json === null ? null : parsePackedRecord(json)
  }

  async loadRevocations (): Promise<{ revocations: Revocation[], cursor: string }> {
    const revocations: Revocation[] = []
    // Records are ASCII: latin1 decoding skips the UTF-8 decoder, a measurable share of loading a million.
    const { cursor } = await this.#readWholeFeed((record) => { revocations.push(parsePackedRecord(record.toString('latin1'))) })
    return { revocations, cursor }
  }

  async loadRevocationsInto (sink: PackedRevocationSink): Promise<{ count: number, cursor: string }> {
    return await this.#readWholeFeed((record) => { sink.addPacked(record) })
  }

  /** Hands every feed record, in order, as the bytes of its packed form to `each`. */
  async #readWholeFeed (each: (record: Buffer) => void): Promise<{ count: number, cursor: string }> {
    return await this.#run('load revocations', async () => {
      // Paging the stream (not the hash) gives feed order and a cursor consistent with what was read, even
      // while revocations keep arriving: whatever lands after the last page is read by the first readFeed.
      let cursor = START_CURSOR
      let count = 0
      const fetch = (after: string): Promise<BufferEntry[]> => {
        const p = this.#cmd.xrangeBuffer(this.keys.revocations, after === START_CURSOR ? '-' : `(${after}`, '+', 'COUNT', PAGE) as Promise<BufferEntry[]>
        // A prefetched page may fail after parsing the current one threw: that must not surface as unhandled.
        p.catch(() => {})
        return p
      }
      let pending = fetch(cursor)
      for (;;) {
        const page = await pending
        const last = page[page.length - 1]
        if (last !== undefined) cursor = last[0].toString('latin1')
        // Ask for the next page before parsing this one, so Redis works while we parse.
        const full = page.length === PAGE
        if (full) pending = fetch(cursor)
        for (const [id, fields] of page) {
          const [name, value] = fields
          if (name === undefined || value === undefined || name.length !== 1 || name[0] !== 0x72 || fields.length !== 2) {
            throw new Error(`malformed feed entry ${id.toString('latin1')}: expected one field 'r'`)
          }
          each(value)
        }
        count += page.length
        if (!full) return { count, cursor }
      }
    })
  }

  async readFeed (cursor: string, options: { blockMs: number, count?: number }): Promise<FeedEntry[]> {
    if (!CURSOR_RE.test(cursor)) throw new ZtError('ZT_BAD_ARGUMENT', `redis store: read feed: cursor ${JSON.stringify(cursor)} is not a stream id`, { cursor })
    const run = this.#feedChain.then(async () => await this.#readFeedNow(cursor, options))
    this.#feedChain = run.catch(() => {})
    return await run
  }

  async #readFeedNow (cursor: string, options: { blockMs: number, count?: number }): Promise<FeedEntry[]> {
    const count = Math.max(1, Math.floor(options.count ?? 1_000))
    const blockMs = Math.max(0, Math.floor(options.blockMs))
    return await this.#run('read feed', async () => {
      const args: (string | number)[] = ['COUNT', count]
      // BLOCK 0 would wait forever; a zero wait means "what is there now".
      if (blockMs > 0) args.push('BLOCK', blockMs)
      const read = this.#blocking.call('XREAD', ...args, 'STREAMS', this.keys.revocations, cursor) as Promise<[string, StreamEntry[]][] | null>
      let timer: NodeJS.Timeout | undefined
      const deadline = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          // No reply past BLOCK + grace: the socket may be half-open. Drop it so the next read gets a fresh one.
          if (this.#blocking.status === 'ready') this.#blocking.disconnect(true)
          reject(new Error(`no reply within ${blockMs + BLOCK_GRACE_MS} ms`))
        }, blockMs + BLOCK_GRACE_MS)
      })
      try {
        const reply = await Promise.race([read, deadline])
        const entries = reply?.[0]?.[1] ?? []
        return entries.map(([id, fields]) => ({ cursor: id, revocation: parseFeedFields(id, fields) }))
      } finally {
        clearTimeout(timer)
        read.catch(() => {})
      }
    })
  }

  async nextCrlNumber (): Promise<bigint> {
    const n = await this.#run('next CRL number', async () => await this.#cmd.incr(this.keys.crlNumber))
    return BigInt(n)
  }

  async saveCrl (crl: StoredCrl): Promise<void> {
    if (crl.number < 0n) throw new ZtError('ZT_BAD_ARGUMENT', `redis store: save CRL: number ${crl.number} is negative`, { number: crl.number.toString() })
    await this.#run('save CRL', async () => {
      await this.#scripts.aztSaveCrl(1, this.keys.crl, crl.number.toString(), Buffer.from(crl.der.buffer, crl.der.byteOffset, crl.der.byteLength))
    })
  }

  async loadCrl (): Promise<StoredCrl | null> {
    return await this.#run('load CRL', async () => {
      const [number, der] = await this.#cmd.hmgetBuffer(this.keys.crl, 'number', 'der')
      if (number == null || der == null) return null
      return { der: new Uint8Array(der), number: BigInt(number.toString('latin1')) }
    })
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    // A feed read may be blocked for up to blockMs: cut that connection rather than wait for it.
    this.#blocking.disconnect()
    try {
      if (this.#cmd.status === 'ready') await this.#cmd.quit()
      else this.#cmd.disconnect()
    } catch {
      this.#cmd.disconnect()
    }
  }
}

/** A Redis URL may carry a password: never print it. */
function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return 'redis://(unparseable url)'
  }
}

/** Opens a Redis-backed store; by default waits until Redis answers and rejects with ZT_STORE_UNAVAILABLE otherwise. */
export async function openRedisStore (options: RedisStoreOptions): Promise<RedisCertStore> {
  const store = new RedisCertStore(options)
  if (options.waitForConnection === false) {
    store.connectInBackground()
    return store
  }
  try {
    await store.connect()
  } catch (err) {
    await store.close()
    throw err
  }
  return store
}
