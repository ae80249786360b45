// The narrow interface behind which the certificate inventory and the revocation store live (files or Redis).
import type { Kind, RevocationReason } from '../common/ids.js'

export type CertStatus = 'active' | 'revoked' | 'expired'

/** One issued certificate, as the inventory keeps it. Times are ISO 8601 strings (UTC). */
export interface IssuedCert {
  /** Canonical serial: lower-case hex, no separators, no leading zeros (common/ids canonicalSerial). */
  serial: string
  id: string
  kind: Kind
  groups: string[]
  notBefore: string
  notAfter: string
}

/** A revocation record (after step-ca's: serial, reason code, revoked-at, expires-at). */
export interface Revocation {
  serial: string
  id: string
  reason: RevocationReason
  /** When `cert revoke` made it durable, ISO 8601 with milliseconds; enforcement latency is measured from it. */
  revokedAt: string
  /** The certificate's notAfter: past it the record may leave the CRL, never the store. */
  notAfter: string
}

/** A certificate as `cert list` shows it. */
export interface CertListing extends IssuedCert {
  status: CertStatus
  revokedAt?: string
  reason?: RevocationReason
}

export interface CertListFilter {
  id?: string
  status?: CertStatus
}

export interface FeedEntry {
  /** Opaque, ordered position in the change feed; pass the last one seen to readFeed to resume after it. */
  cursor: string
  revocation: Revocation
}

export interface RevokeResult {
  revocation: Revocation
  /** false when the serial was already revoked: revoke is idempotent and keeps the first record. */
  created: boolean
}

/**
 * Takes revocation records in bulk as packed bytes, "serial id reason revokedAt notAfter" in ASCII
 * (store/packed-record.ts), so a store can hand a million of them over without making an object of each.
 */
export interface PackedRevocationSink {
  /** Copies what it keeps (the caller may reuse `record`); throws on a record that is not five fields. */
  addPacked (record: Uint8Array): void
}

export interface StoredCrl {
  der: Uint8Array
  number: bigint
}

/**
 * Certificate inventory and revocation store. Every implementation passes test/store-contract.ts.
 * Methods that write resolve only once the write is durable (fsync'd file, or acknowledged by Redis).
 * Failures to reach the backing store reject with ZtError code ZT_STORE_UNAVAILABLE.
 */
export interface CertStore {
  readonly backend: 'file' | 'redis'

  /**
   * Records newly issued certificates (a batch is written at once). Rejects with ZT_BAD_ARGUMENT, recording nothing of
   * the batch, if a serial is already in the inventory (also when another instance recorded it) or repeats in the batch.
   */
  recordIssued (certs: readonly IssuedCert[]): Promise<void>

  /** The inventory entry for a canonical serial, or null when this CA never issued it. */
  getIssued (serial: string): Promise<IssuedCert | null>

  /** Inventory with computed status, ordered by notBefore then serial. `now` decides expiry (default: now). */
  list (filter?: CertListFilter, now?: Date): Promise<CertListing[]>

  /**
   * Revokes the given canonical serials in one atomic step: records and feed entries together.
   * Rejects with ZT_UNKNOWN_SERIAL (revoking nothing) if any serial was never issued.
   */
  revoke (serials: readonly string[], reason: RevocationReason, at?: Date): Promise<RevokeResult[]>

  getRevocation (serial: string): Promise<Revocation | null>

  /** Every revocation, in feed order, and the cursor just after the last: what a node loads its mirror from. */
  loadRevocations (): Promise<{ revocations: Revocation[], cursor: string }>

  /**
   * Optional, for stores that keep records packed: what loadRevocations gives, handed to `sink` record by record
   * in feed order instead of as objects. Rejects (having fed part of them) if the store cannot be read or a record is
   * malformed; a caller keeps the sink's contents only when it resolves.
   */
  loadRevocationsInto? (sink: PackedRevocationSink): Promise<{ count: number, cursor: string }>

  /**
   * Feed entries after `cursor`, in order. Waits up to `blockMs` for the first new entry; resolves with []
   * when none arrived, which also confirms that the reader is current as of the call.
   */
  readFeed (cursor: string, options: { blockMs: number, count?: number }): Promise<FeedEntry[]>

  /** Allocates the next CRL number: strictly greater than any number this store handed out before. */
  nextCrlNumber (): Promise<bigint>

  /** Keeps the latest signed CRL; a CRL whose number is not above the stored one is ignored. */
  saveCrl (crl: StoredCrl): Promise<void>

  /** The latest signed CRL, or null when none was made yet. */
  loadCrl (): Promise<StoredCrl | null>

  close (): Promise<void>
}
