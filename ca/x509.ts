// @peculiar/x509 on demand: only `ca init` (CA and broker certificates) and CRL signing build with it. Importing it
// (asn1 schemas, tsyringe, the Reflect polyfill) costs about 0.3 s of CPU, which every `cert issue-bulk` run would
// otherwise pay at start-up although leaves are signed from pre-built DER (leaf.ts).
import type * as X509 from '@peculiar/x509'

export type X509Lib = typeof X509

let loading: Promise<X509Lib> | undefined

/** Loads @peculiar/x509 once, with the Reflect polyfill that tsyringe (under it) needs loaded first. */
export async function loadX509 (): Promise<X509Lib> {
  loading ??= (async () => {
    await import('reflect-metadata')
    return await import('@peculiar/x509')
  })()
  return await loading
}
