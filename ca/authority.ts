// The CA at work: issue (from a CSR or a generated key), revoke, and sign CRLs, with the keys loaded once.
import { promises as fs } from 'node:fs'
import { ZtError } from '../common/errors.js'
import { checkGroup, checkId, checkKind, checkReason, checkSerial, type Kind, type RevocationReason } from '../common/ids.js'
import type { CertStore, IssuedCert, RevokeResult } from '../store/types.js'
import { buildCrl } from './crl.js'
import { verifyCsr } from './csr.js'
import { loadHome, type LoadedHome } from './home.js'
import { checkKeyType, generateDeviceKey, loadEncryptedKey, type KeyType, type SigningKeys } from './keys.js'
import { derToPem, issuingFacts, LeafSigner, type IssuingFacts } from './leaf.js'
import { addDays, BACKDATE_MS, minDate, newSerial, VALIDITY_DAYS } from './profile.js'
import { openStore } from './store.js'
import { loadX509 } from './x509.js'

export interface IssueRequest {
  id: string
  /** @default "device" */
  kind?: Kind
  groups?: string[]
  /** Validity in days (default 90), capped by the issuing CA's own notAfter. */
  days?: number
  /** PEM or DER of a PKCS#10 CSR. Exactly one of csr and generateKey. */
  csr?: string | Uint8Array
  /** Generate an EC P-256 key pair (or keyType) for the caller (development and tests). */
  generateKey?: boolean
  /** Key type generated with generateKey. @default "ec-p256" */
  keyType?: KeyType
}

export interface IssuedBundle {
  record: IssuedCert
  /** The leaf certificate, PEM. */
  certPem: string
  /** Leaf + issuing CA, PEM: what `cert issue` prints. */
  bundlePem: string
  /** PKCS#8 PEM of the generated private key (only with generateKey). */
  keyPem?: string
}

/** One row of issueMany: the bundle, or the error that row got. */
export type IssueOutcome = { ok: true, bundle: IssuedBundle } | { ok: false, error: ZtError }

export interface Authority {
  readonly home: LoadedHome
  readonly store: CertStore
  issue (req: IssueRequest): Promise<IssuedBundle>
  /**
   * Issues many at once and records every success in one inventory write. With stopOnError, rows after the
   * first failure are not issued (their outcome is absent from the result).
   */
  issueMany (reqs: readonly IssueRequest[], options?: { stopOnError?: boolean }): Promise<IssueOutcome[]>
  /** Builds and signs a certificate without recording it: the caller must recordIssued before handing it out. */
  sign (req: IssueRequest, operation?: string): Promise<IssuedBundle>
  /** Revokes one serial (canonical or not), or every active certificate of an id. */
  revoke (target: { serial: string } | { id: string }, reason?: RevocationReason): Promise<RevokeResult[]>
  /** Signs a new CRL with the next CRL number, stores it, and returns its DER. */
  crl (): Promise<Uint8Array>
  close (): Promise<void>
}

export interface OpenAuthorityOptions {
  /** Default: $AEDES_ZT_CA_PASSPHRASE; a dev home uses private/passphrase. */
  passphrase?: string
  /** Redis store URL; default the file store in the home. Ignored when store is given. */
  redisUrl?: string
  /** A store the caller owns (not closed by Authority.close). */
  store?: CertStore
  /** Environment to read AEDES_ZT_CA_PASSPHRASE from. @default process.env */
  env?: NodeJS.ProcessEnv
}

function toZtError (err: unknown, operation: string): ZtError {
  if (err instanceof ZtError) return err
  return new ZtError('ZT_BAD_ARGUMENT', `${operation}: ${err instanceof Error ? err.message : String(err)}`, {}, { cause: err })
}

function secondsFloor (d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000)
}

class CaAuthority implements Authority {
  private readonly keyId: string
  private readonly issuingNotAfter: Date
  private readonly leaves: LeafSigner

  constructor (
    readonly home: LoadedHome,
    readonly store: CertStore,
    private readonly keys: SigningKeys,
    facts: IssuingFacts,
    private readonly ownsStore: boolean,
  ) {
    this.keyId = Buffer.from(facts.keyId).toString('hex')
    this.issuingNotAfter = facts.notAfter
    this.leaves = new LeafSigner(home.issuingDer, facts.keyId, keys.keyObject, home.config.keyType, home.config.trustDomain)
  }

  async sign (req: IssueRequest, operation = 'cert issue'): Promise<IssuedBundle> {
    const id = checkId(req.id, operation)
    const kind = checkKind(req.kind ?? 'device', operation)
    const groups = [...new Set((req.groups ?? []).map((g) => checkGroup(g, operation)))]
    const days = req.days ?? VALIDITY_DAYS.leaf
    if (!Number.isInteger(days) || days < 1 || days > VALIDITY_DAYS.leafMax) {
      throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: days ${JSON.stringify(days)} must be an integer from 1 to ${VALIDITY_DAYS.leafMax}`, { days })
    }
    const hasCsr = req.csr !== undefined
    if (hasCsr === (req.generateKey === true)) {
      throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: give exactly one of a CSR and generateKey`)
    }

    let spki: Uint8Array
    let keyPem: string | undefined
    if (req.csr !== undefined) {
      spki = verifyCsr(req.csr, operation).spki
    } else {
      const generated = await generateDeviceKey(checkKeyType(req.keyType ?? 'ec-p256', operation))
      spki = generated.spki
      keyPem = generated.pkcs8Pem
    }

    const now = secondsFloor(new Date())
    const notBefore = new Date(now.getTime() - BACKDATE_MS)
    const notAfter = secondsFloor(minDate(addDays(now, days), this.issuingNotAfter))
    if (notAfter.getTime() <= now.getTime()) {
      throw new ZtError('ZT_BAD_CERT', `${operation}: the issuing CA expired on ${this.issuingNotAfter.toISOString()}; nothing can be issued`)
    }
    const serial = newSerial()
    const der = this.leaves.sign({ serial, id, kind, groups, notBefore, notAfter, spki })
    const certPem = derToPem(der)
    const bundle: IssuedBundle = {
      record: { serial, id, kind, groups, notBefore: notBefore.toISOString(), notAfter: notAfter.toISOString() },
      certPem,
      bundlePem: certPem + this.home.issuingPem,
    }
    if (keyPem !== undefined) bundle.keyPem = keyPem
    return bundle
  }

  async issue (req: IssueRequest): Promise<IssuedBundle> {
    const bundle = await this.sign(req)
    await this.store.recordIssued([bundle.record])
    return bundle
  }

  async issueMany (reqs: readonly IssueRequest[], options: { stopOnError?: boolean } = {}): Promise<IssueOutcome[]> {
    const outcomes: IssueOutcome[] = []
    for (const req of reqs) {
      try {
        outcomes.push({ ok: true, bundle: await this.sign(req, 'cert issue-bulk') })
      } catch (err) {
        outcomes.push({ ok: false, error: toZtError(err, 'cert issue-bulk') })
        if (options.stopOnError === true) break
      }
    }
    const records = outcomes.flatMap((o) => o.ok ? [o.bundle.record] : [])
    await this.store.recordIssued(records)
    return outcomes
  }

  async revoke (target: { serial: string } | { id: string }, reason: RevocationReason = 'unspecified'): Promise<RevokeResult[]> {
    return await revokeIn(this.store, target, reason)
  }

  async crl (): Promise<Uint8Array> {
    // @peculiar/x509 is loaded here, for CRLs only: issuance reads the issuing CA's DER itself (leaf.ts).
    const x509 = await loadX509()
    const { revocations } = await this.store.loadRevocations()
    const number = await this.store.nextCrlNumber()
    const crl = await buildCrl({
      issuing: new x509.X509Certificate(this.home.issuingPem),
      signingKey: await this.keys.cryptoKey(),
      keyType: this.home.config.keyType,
      keyId: this.keyId,
      number,
      revocations,
      thisUpdate: new Date(),
      crlDays: this.home.config.crlDays,
    })
    const der = new Uint8Array(crl.rawData)
    await this.store.saveCrl({ der, number })
    return der
  }

  async close (): Promise<void> {
    if (this.ownsStore) await this.store.close()
  }
}

/**
 * Revokes one serial (any case, colons allowed) or every active certificate of an id, in one store write.
 * Needs no CA key: revoking must work in an emergency without the passphrase at hand.
 */
export async function revokeIn (store: CertStore, target: { serial: string } | { id: string }, reason: RevocationReason = 'unspecified'): Promise<RevokeResult[]> {
  const op = 'cert revoke'
  checkReason(reason, op)
  let serials: string[]
  if ('serial' in target) {
    const serial = checkSerial(target.serial, op)
    if (await store.getIssued(serial) === null) {
      throw new ZtError('ZT_UNKNOWN_SERIAL', `${op}: serial ${serial} was not issued by this CA; nothing revoked`, { serial })
    }
    serials = [serial]
  } else {
    const id = checkId(target.id, op)
    serials = (await store.list({ id, status: 'active' })).map((c) => c.serial)
    if (serials.length === 0) throw new ZtError('ZT_UNKNOWN_ID', `${op}: id ${JSON.stringify(id)} has no active certificate; nothing revoked`, { id })
  }
  return await store.revoke(serials, reason)
}

/** The passphrase for a home: explicit, else a dev home's own file, else $AEDES_ZT_CA_PASSPHRASE. */
async function resolvePassphrase (home: LoadedHome, options: OpenAuthorityOptions, operation: string): Promise<string> {
  if (options.passphrase !== undefined && options.passphrase !== '') return options.passphrase
  if (home.config.dev) {
    // A dev home was made with a generated passphrase: a developer's global AEDES_ZT_CA_PASSPHRASE must not shadow it.
    try {
      return (await fs.readFile(home.paths.passphrase, 'utf8')).trim()
    } catch (err) {
      throw new ZtError('ZT_NO_PASSPHRASE', `${operation}: dev home ${home.paths.home} has lost ${home.paths.passphrase} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, {}, { cause: err })
    }
  }
  const fromEnv = (options.env ?? process.env).AEDES_ZT_CA_PASSPHRASE
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv
  throw new ZtError('ZT_NO_PASSPHRASE', `${operation}: set AEDES_ZT_CA_PASSPHRASE to the passphrase of the CA in ${home.paths.home}`)
}

/** Opens the CA with its private keys; passphrase from options, else $AEDES_ZT_CA_PASSPHRASE, else a dev home's file. */
export async function openAuthority (homeDir: string, options: OpenAuthorityOptions = {}): Promise<Authority> {
  const op = 'open CA'
  const home = await loadHome(homeDir)
  const passphrase = await resolvePassphrase(home, options, op)
  let pem: string
  try {
    pem = await fs.readFile(home.paths.issuingKey, 'utf8')
  } catch (err) {
    throw new ZtError('ZT_NO_HOME', `${op}: cannot read the issuing CA key ${home.paths.issuingKey} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, {}, { cause: err })
  }
  const keys = await loadEncryptedKey(pem, passphrase, home.config.keyType, 'issuing CA', op)
  // Read once per authority, before a store is opened: bulk issuance signs thousands of leaves against the same CA.
  const facts = issuingFacts(home.issuingDer)
  if (options.store !== undefined) return new CaAuthority(home, options.store, keys, facts, false)
  const store = await openStore(home, options.redisUrl !== undefined ? { redisUrl: options.redisUrl } : {})
  return new CaAuthority(home, store, keys, facts, true)
}
