// In-memory mirror of the revoked set, kept current by following the store's change feed.
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import type { Logger } from 'pino'
import { oneLine, ZtError } from '../common/errors.js'
import type { CertStore, Revocation } from '../store/types.js'
import { RevokedSet } from './revoked-set.js'

export interface RevocationMirrorOptions {
  /**
   * Past this long without confirming it is current, the node refuses new connections.
   * @default 30000
   */
  maxStalenessMs?: number
  /**
   * How long one feed read waits for news; also how often currency is confirmed when nothing happens.
   * @default 1000
   */
  blockMs?: number
  logger?: Logger
}

export interface MirrorState {
  /** Revoked serials known to this node. */
  size: number
  /** ms since the node last confirmed it had every revocation (Infinity before the first load). */
  stalenessMs: number
  /** true while stalenessMs <= maxStalenessMs: the node may admit new connections. */
  current: boolean
  /** Whether the store answered the last read. */
  connected: boolean
}

/** Entries asked for per feed read; a full page means more may be waiting, so it does not confirm currency. */
const FEED_COUNT = 1_000
const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 1_000

/**
 * Events: 'revoked' (revocation: Revocation, latencyMs: number) for every revocation learned after start(),
 * including those caught up after an outage; 'state' (MirrorState) when `current` or `connected` flips.
 *
 * If start() rejects (the store is down), the mirror holds nothing and reports current:false, so a broker that
 * admits only while current admits no one; start() may be called again to retry.
 */
export class RevocationMirror extends EventEmitter {
  readonly #store: CertStore
  readonly #maxStalenessMs: number
  readonly #blockMs: number
  readonly #logger: Logger | undefined
  #revoked = new RevokedSet()
  #cursor = ''
  /** performance.now() when the last read that confirmed currency was issued; -Infinity before the first load. */
  #confirmedAt = Number.NEGATIVE_INFINITY
  #connected = false
  #lastCurrent = false
  #started = false
  #closed = false
  #ticker: NodeJS.Timeout | undefined
  #wake: (() => void) | undefined
  #starting: Promise<void> | undefined

  constructor (store: CertStore, options: RevocationMirrorOptions = {}) {
    super()
    const maxStalenessMs = options.maxStalenessMs ?? 30_000
    const blockMs = options.blockMs ?? 1_000
    if (!Number.isFinite(maxStalenessMs) || maxStalenessMs <= 0) throw new ZtError('ZT_BAD_CONFIG', `revocation: maxStalenessMs ${maxStalenessMs} must be a positive number`, { maxStalenessMs })
    if (!Number.isFinite(blockMs) || blockMs <= 0) throw new ZtError('ZT_BAD_CONFIG', `revocation: blockMs ${blockMs} must be a positive number`, { blockMs })
    this.#store = store
    this.#maxStalenessMs = maxStalenessMs
    this.#blockMs = blockMs
    this.#logger = options.logger
  }

  /** Loads every revocation, then follows the feed in the background. Rejects if the store cannot be read. */
  async start (): Promise<void> {
    if (this.#closed) throw new ZtError('ZT_BAD_ARGUMENT', 'revocation mirror: start after close', {})
    if (this.#started) return
    // Concurrent callers share one load; after a failed one, the next call tries again.
    this.#starting ??= this.#load().finally(() => { this.#starting = undefined })
    await this.#starting
  }

  async #load (): Promise<void> {
    const issuedAt = performance.now()
    // Filled aside: a load that fails half-way leaves nothing behind for the next attempt to trip over.
    const revoked = new RevokedSet()
    let cursor: string
    try {
      const packed = await this.#store.loadRevocationsInto?.(revoked)
      if (packed !== undefined) {
        cursor = packed.cursor
      } else {
        const loaded = await this.#store.loadRevocations()
        for (const r of loaded.revocations) revoked.add(r)
        cursor = loaded.cursor
      }
    } catch (err) {
      this.#logger?.error({ event: 'revocation.load_failed', backend: this.#store.backend, err: oneLine(err) }, 'revocation mirror: cannot load revocations; admitting no one')
      throw err
    }
    if (this.#closed) return
    this.#revoked = revoked
    this.#cursor = cursor
    this.#confirmedAt = issuedAt
    this.#started = true
    this.#setConnected(true)
    this.#logger?.info({ event: 'revocation.loaded', backend: this.#store.backend, size: this.#revoked.size, ms: Math.round(performance.now() - issuedAt) }, 'revocation mirror: loaded')
    // The feed loop notices staleness only when a read returns; a hung read must still flip `current` on time.
    const tick = Math.max(10, Math.min(250, Math.floor(this.#maxStalenessMs / 4)))
    this.#ticker = setInterval(() => { this.#checkCurrent() }, tick)
    this.#ticker.unref()
    void this.#follow()
  }

  /** Memory lookup, O(1): is this canonical serial revoked? */
  isRevoked (serial: string): boolean {
    return this.#revoked.has(serial)
  }

  /** The record for a revoked serial (for audit lines), else undefined; decoded on each call. */
  get (serial: string): Revocation | undefined {
    return this.#revoked.get(serial)
  }

  state (): MirrorState {
    const stalenessMs = performance.now() - this.#confirmedAt
    return { size: this.#revoked.size, stalenessMs, current: stalenessMs <= this.#maxStalenessMs, connected: this.#connected }
  }

  /** Stops following. Does not wait for a read in flight (it may block for blockMs); its result is dropped. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#ticker)
    this.#wake?.()
    this.#connected = false
    this.#lastCurrent = false
    this.#confirmedAt = Number.NEGATIVE_INFINITY
  }

  async #follow (): Promise<void> {
    let backoff = RETRY_MIN_MS
    while (!this.#closed) {
      // Currency is as of when the read was issued: anything revoked before then is in its reply.
      const issuedAt = performance.now()
      let entries
      try {
        entries = await this.#store.readFeed(this.#cursor, { blockMs: this.#blockMs, count: FEED_COUNT })
      } catch (err) {
        if (this.#closed) return
        if (this.#connected) this.#logger?.warn({ event: 'revocation.feed_lost', backend: this.#store.backend, err: oneLine(err) }, 'revocation mirror: cannot read the feed; keeping the mirror and retrying')
        this.#setConnected(false)
        await this.#sleep(backoff)
        backoff = Math.min(backoff * 2, RETRY_MAX_MS)
        continue
      }
      if (this.#closed) return
      backoff = RETRY_MIN_MS
      for (const entry of entries) {
        this.#cursor = entry.cursor
        this.#apply(entry.revocation)
      }
      if (entries.length < FEED_COUNT) this.#confirmedAt = issuedAt
      if (!this.#connected) this.#logger?.info({ event: 'revocation.feed_restored', backend: this.#store.backend, caughtUp: entries.length }, 'revocation mirror: following the feed again')
      this.#setConnected(true)
      this.#checkCurrent()
    }
  }

  #apply (revocation: Revocation): void {
    // The load and the first reads can overlap; a serial is news only once.
    if (!this.#revoked.add(revocation)) return
    const latencyMs = Date.now() - Date.parse(revocation.revokedAt)
    try {
      this.emit('revoked', revocation, latencyMs)
    } catch (err) {
      // A failing listener must not stop the mirror from following (nor be mistaken for a store failure).
      this.#logger?.error({ event: 'revocation.listener_failed', serial: revocation.serial, err: oneLine(err) }, 'revocation mirror: a revoked listener threw')
    }
  }

  #setConnected (connected: boolean): void {
    if (this.#connected === connected) return
    this.#connected = connected
    this.#emitState()
  }

  #checkCurrent (): void {
    if (this.#closed) return
    const current = this.state().current
    if (current === this.#lastCurrent) return
    this.#lastCurrent = current
    if (!current) this.#logger?.warn({ event: 'revocation.stale', backend: this.#store.backend, maxStalenessMs: this.#maxStalenessMs }, 'revocation mirror: cannot confirm it is current; refusing new connections')
    else this.#logger?.info({ event: 'revocation.current', backend: this.#store.backend }, 'revocation mirror: current')
    this.#emitState()
  }

  #emitState (): void {
    const s = this.state()
    this.#lastCurrent = s.current
    try {
      this.emit('state', s)
    } catch (err) {
      this.#logger?.error({ event: 'revocation.listener_failed', err: oneLine(err) }, 'revocation mirror: a state listener threw')
    }
  }

  async #sleep (ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, ms)
      function done (): void { clearTimeout(t); resolve() }
      this.#wake = done
    })
    this.#wake = undefined
  }
}
