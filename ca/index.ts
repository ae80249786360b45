// The built-in CA: public surface (the `aedes-zero-trust/ca` export). Implementation lives in the other files of ca/.
// The CA's own modules load @peculiar/x509 only when they build with it (x509.ts), polyfill included; this import stays
// for code that loads @peculiar/x509 itself after this module (tsyringe, under it, needs the Reflect polyfill first).
// The CLI imports the CA modules one by one, so `cert ...` commands load neither.
import 'reflect-metadata'

export type { KeyType, KeyDescription } from './keys.js'
export { KEY_TYPES, isKeyType, describePublicKey } from './keys.js'
export type { HomeConfig, HomePaths, LoadedHome, InitOptions } from './home.js'
export { initHome, loadHome, homePaths, DEFAULT_CA_NAME, DEFAULT_CRL_DAYS } from './home.js'
export type { IssueRequest, IssuedBundle, IssueOutcome, Authority, OpenAuthorityOptions } from './authority.js'
export { openAuthority, revokeIn } from './authority.js'
export { issueBulk, parseManifest, type BulkOptions, type BulkSummary, type BulkFailure, type ManifestRow } from './bulk.js'
export { openStore } from './store.js'
export { verifyCsr, type VerifiedCsr } from './csr.js'
export { VALIDITY_DAYS, DEFAULT_SERVER_NAMES } from './profile.js'
export { OID_CRL_NUMBER } from './crl.js'
