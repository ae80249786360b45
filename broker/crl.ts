// The CRL on a broker node: re-signs it after revocations (when the node holds the CA key) and serves only a verified one.
import * as x509 from '@peculiar/x509'
import type { Logger } from 'pino'
import { OID_CRL_NUMBER, type Authority } from '../ca/index.js'
import { oneLine, ZtError } from '../common/errors.js'
import type { CertStore, StoredCrl } from '../store/types.js'
import { bytesEqual } from '../ca/der.js'

export interface CrlServiceOptions {
  store: Pick<CertStore, 'loadCrl'>
  /** PEM of our issuing CA: a stored CRL is served only if this CA signed it. */
  issuingPem: string
  /** Signs new CRLs (an open CA); null or absent: this node only serves. */
  authority?: Pick<Authority, 'crl'> | null
  /** Emits 'revoked' for every new revocation (a RevocationMirror). */
  revocation?: Pick<NodeJS.EventEmitter, 'on' | 'off'>
  logger?: Logger
  /** Quiet time after the last revocation of a burst before signing. @default 200 */
  debounceMs?: number
  /** A continuous stream of revocations still gets a CRL this often. @default 2000 */
  maxWaitMs?: number
  /**
   * How often a signing node checks whether the stored CRL is past half its validity (and re-signs it), or whether
   * a signature failed and must be retried. @default 60000
   */
  checkMs?: number
  now?: () => number
}

interface Served {
  der: Uint8Array
  number: bigint
}

/** What each refusal reason means, for one-line error messages. */
const REFUSALS: Readonly<Record<string, string>> = {
  'malformed': 'it is not a readable CRL',
  'foreign-issuer': 'it was issued by another CA',
  'bad-signature': 'its signature does not verify under our issuing CA',
  'no-crl-number': 'it carries no CRL number',
  'number-not-higher': 'its number is not above one this node already handed out (an older CRL put back?)',
}

export type CrlCheck = { ok: true, number: bigint, thisUpdate: Date, nextUpdate: Date | undefined } | { ok: false, reason: string }

/** Reads the CRL number extension (a DER INTEGER) as a bigint. */
function crlNumberOf (crl: x509.X509Crl): bigint | null {
  const ext = crl.getExtension(OID_CRL_NUMBER)
  if (ext === null) return null
  const v = new Uint8Array(ext.value)
  if (v[0] !== 0x02 || v.length < 3 || v[1] !== v.length - 2 || ((v[2] ?? 0) & 0x80) !== 0) return null
  return BigInt('0x' + Buffer.from(v.subarray(2)).toString('hex'))
}

/** Whether `der` is a CRL signed by `issuing`, and its number and dates. Never throws on bad input. */
export async function checkCrl (der: Uint8Array, issuing: x509.X509Certificate): Promise<CrlCheck> {
  let crl: x509.X509Crl
  try {
    crl = new x509.X509Crl(der)
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  if (crl.issuer !== issuing.subject) return { ok: false, reason: 'foreign-issuer' }
  let signed = false
  try {
    signed = await crl.verify({ publicKey: issuing })
  } catch {
    signed = false
  }
  if (!signed) return { ok: false, reason: 'bad-signature' }
  const number = crlNumberOf(crl)
  if (number === null) return { ok: false, reason: 'no-crl-number' }
  return { ok: true, number, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate }
}

/**
 * Keeps the cluster's CRL current and serves it. Any node with the CA key re-signs after a burst of revocations
 * (one signature per burst) and before half the CRL's validity has run out; CRL numbers come from the shared store,
 * so they increase across nodes. Re-signing only keeps an existing CRL current: the first one is made on purpose
 * (`aedes-zt crl`, or POST /v1/crl), so a deployment that publishes no CRL never starts publishing one by accident.
 *
 * Serving trusts nothing in the store: a CRL that our issuing CA did not sign, or whose number is lower than one this
 * node already served, is refused (`crl.refused`) and the last good one is served instead.
 */
export class CrlService {
  readonly #store: Pick<CertStore, 'loadCrl'>
  readonly #issuing: x509.X509Certificate
  readonly #authority: Pick<Authority, 'crl'> | null
  readonly #revocation: Pick<NodeJS.EventEmitter, 'on' | 'off'> | undefined
  readonly #log: Logger | undefined
  readonly #debounceMs: number
  readonly #maxWaitMs: number
  readonly #checkMs: number
  readonly #now: () => number
  #served: Served | undefined
  /** A revocation arrived that no stored CRL reflects yet. */
  #dirty = false
  #burstStartedAt: number | undefined
  #debounce: NodeJS.Timeout | undefined
  #checker: NodeJS.Timeout | undefined
  #signing: Promise<void> | undefined
  #closed = false
  readonly #onRevoked = (): void => { this.#schedule() }

  constructor (options: CrlServiceOptions) {
    this.#store = options.store
    this.#issuing = new x509.X509Certificate(options.issuingPem)
    this.#authority = options.authority ?? null
    this.#revocation = options.revocation
    this.#log = options.logger
    this.#debounceMs = options.debounceMs ?? 200
    this.#maxWaitMs = options.maxWaitMs ?? 2_000
    this.#checkMs = options.checkMs ?? 60_000
    this.#now = options.now ?? Date.now
  }

  /** Whether this node signs CRLs (it holds the CA key). */
  get signing (): boolean {
    return this.#authority !== null
  }

  start (): void {
    if (this.#authority === null || this.#closed) return
    this.#revocation?.on('revoked', this.#onRevoked)
    this.#checker = setInterval(() => { void this.#periodic() }, this.#checkMs)
    this.#checker.unref()
  }

  /** The CRL to serve: the stored one once verified, else the last good one; null when there is none yet. */
  async current (): Promise<Uint8Array | null> {
    let stored
    try {
      stored = await this.#store.loadCrl()
    } catch (err) {
      // A signed CRL stays valid until its nextUpdate: serving the last good one beats failing.
      if (this.#served !== undefined) return this.#served.der
      throw err
    }
    if (stored === null) return this.#served?.der ?? null
    const refusal = await this.#judge(stored)
    if (refusal === null) return stored.der
    this.#log?.warn({ event: 'crl.refused', id: null, serial: null, reason: refusal.reason, number: refusal.number.toString(), served: this.#served?.number.toString() ?? null }, 'the CRL in the store is not one this node may serve; serving the last good one')
    if (this.#served !== undefined) return this.#served.der
    throw new ZtError('ZT_STORE_UNAVAILABLE', `CRL: the stored CRL was refused (${refusal.reason}) and this node has served none before`, { reason: refusal.reason })
  }

  /**
   * The stored CRL, checked as current() checks it but with no fallback: when the store holds a CRL this node may not
   * hand out as ours, this rejects (ZT_INTERNAL, with the reason) and logs `crl.refused` as an error. For callers that
   * must not paper over it (the admin API). Null when no CRL was made yet; store failures reject as they come.
   */
  async verified (): Promise<Uint8Array | null> {
    const stored = await this.#store.loadCrl()
    if (stored === null) return null
    const refusal = await this.#judge(stored)
    if (refusal === null) return stored.der
    const { reason, number } = refusal
    this.#log?.error({ event: 'crl.refused', id: null, serial: null, reason, number: number.toString(), served: this.#served?.number.toString() ?? null }, 'the CRL in the store is not one this node may hand out')
    throw new ZtError('ZT_INTERNAL', `CRL: the stored CRL (number ${number}) is refused: ${REFUSALS[reason] ?? reason}; make a new one with aedes-zt crl`, { reason })
  }

  /** null when `stored` may be served (and remembers it as served), else why not. */
  async #judge (stored: StoredCrl): Promise<{ reason: string, number: bigint } | null> {
    const last = this.#served
    if (last !== undefined && bytesEqual(stored.der, last.der)) return null
    const check = await checkCrl(stored.der, this.#issuing)
    if (!check.ok) return { reason: check.reason, number: stored.number }
    if (last !== undefined && check.number <= last.number) return { reason: 'number-not-higher', number: check.number }
    this.#served = { der: stored.der, number: check.number }
    return null
  }

  /** Signs now if a revocation is waiting (tests and shutdown use it); resolves when done. */
  async flush (): Promise<void> {
    if (this.#debounce !== undefined) { clearTimeout(this.#debounce); this.#debounce = undefined }
    if (this.#dirty) await this.#sign('revocations')
    else await this.#signing
  }

  #schedule (): void {
    if (this.#closed) return
    this.#dirty = true
    const now = this.#now()
    this.#burstStartedAt ??= now
    clearTimeout(this.#debounce)
    const wait = Math.max(0, Math.min(this.#debounceMs, this.#burstStartedAt + this.#maxWaitMs - now))
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined
      void this.#sign('revocations')
    }, wait)
  }

  async #periodic (): Promise<void> {
    if (this.#closed || this.#signing !== undefined) return
    if (this.#dirty) { await this.#sign('retry'); return }
    let stored
    try {
      stored = await this.#store.loadCrl()
    } catch {
      return // the store is away; the next check tries again
    }
    if (stored === null) return
    const check = await checkCrl(stored.der, this.#issuing)
    // A refused CRL is not ours to overwrite blindly on a timer; the next revocation replaces it.
    if (!check.ok || check.nextUpdate === undefined) return
    const half = check.thisUpdate.getTime() + (check.nextUpdate.getTime() - check.thisUpdate.getTime()) / 2
    if (this.#now() >= half) await this.#sign('refresh')
  }

  async #sign (why: 'revocations' | 'retry' | 'refresh'): Promise<void> {
    // One signature at a time; revocations arriving meanwhile mark the CRL dirty again and get the next one.
    while (this.#signing !== undefined) await this.#signing
    if (this.#closed || this.#authority === null) return
    const authority = this.#authority
    this.#signing = (async () => {
      this.#dirty = false
      this.#burstStartedAt = undefined
      try {
        // Only keep an existing CRL current; the first one is an operator's decision.
        if (why !== 'refresh' && await this.#store.loadCrl() === null) return
        const der = await authority.crl()
        const check = await checkCrl(der, this.#issuing)
        this.#log?.info({ event: 'crl.signed', id: null, serial: null, reason: why, number: check.ok ? check.number.toString() : null }, 'signed a new CRL')
      } catch (err) {
        if (why !== 'refresh') this.#dirty = true
        this.#log?.warn({ event: 'crl.sign.failed', id: null, serial: null, reason: oneLine(err) }, `CRL signing failed; retrying within ${this.#checkMs} ms`)
      }
    })()
    try {
      await this.#signing
    } finally {
      this.#signing = undefined
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#revocation?.off('revoked', this.#onRevoked)
    clearTimeout(this.#debounce)
    clearInterval(this.#checker)
    await this.#signing?.catch(() => {})
  }
}
