// Test helper: certificates our CA would never issue (CA:TRUE leaves, missing EKU, mismatched names, foreign CAs), signed with @peculiar/x509.
import 'reflect-metadata'
import { createPrivateKey, randomBytes, webcrypto } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import * as x509 from '@peculiar/x509'

// The compiler has no DOM lib: WebCrypto types come from Node's namespace.
type CryptoKey = webcrypto.CryptoKey
type CryptoKeyPair = webcrypto.CryptoKeyPair
type Algorithm = webcrypto.Algorithm
type EcdsaParams = webcrypto.EcdsaParams
const subtle = webcrypto.subtle
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

export interface Issuer {
  cert: x509.X509Certificate
  key: CryptoKey
  alg: EcdsaParams | Algorithm
}

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams

/** The test CA's issuing CA with its key (encrypted PKCS#8 in <home>/private/issuing.key). */
export async function loadIssuer (home: string, passphrase: string): Promise<Issuer> {
  const cert = new x509.X509Certificate(readFileSync(path.join(home, 'issuing.pem'), 'utf8'))
  const keyObj = createPrivateKey({ key: readFileSync(path.join(home, 'private', 'issuing.key'), 'utf8'), passphrase })
  const der = keyObj.export({ format: 'der', type: 'pkcs8' })
  if (keyObj.asymmetricKeyType !== 'ec') throw new Error('forge: tests expect an EC issuing key')
  const curve = keyObj.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'P-384' : 'P-256'
  const key = await subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: curve }, false, ['sign'])
  return { cert, key, alg: { name: 'ECDSA', hash: curve === 'P-384' ? 'SHA-384' : 'SHA-256' } as EcdsaParams }
}

/** A self-signed CA that is not ours (optionally copying our issuing CA's subject name, to look like it). */
export async function foreignIssuer (subject = 'CN=aedes-zt Issuing CA'): Promise<Issuer> {
  const keys = await subtle.generateKey(EC, true, ['sign', 'verify']) as CryptoKeyPair
  const ski = await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01' + randomBytes(8).toString('hex'),
    name: subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true), ski],
  })
  return { cert, key: keys.privateKey, alg: ECDSA_SHA256 }
}

export interface ForgeOptions {
  id?: string
  kind?: string
  trustDomain?: string
  /** CN values (default [id]); [] for none. */
  cns?: string[]
  /** SAN URIs (default the SPIFFE URI from kind, trustDomain, id). */
  uris?: string[]
  ous?: string[]
  ca?: boolean
  basicConstraints?: boolean
  /** EKU OIDs (default clientAuth); null omits the extension. */
  eku?: string[] | null
  keyUsage?: number
  key?: 'ec-p256' | 'ec-p384' | 'rsa-1024' | 'rsa-2048'
  notBefore?: Date
  notAfter?: Date
}

export interface Forged {
  certPem: string
  keyPem: string
  serial: string
  der: Uint8Array
}

async function leafKeys (kind: ForgeOptions['key']): Promise<CryptoKeyPair> {
  switch (kind ?? 'ec-p256') {
    case 'ec-p384': return await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']) as CryptoKeyPair
    case 'rsa-1024':
    case 'rsa-2048':
      return await subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', modulusLength: kind === 'rsa-1024' ? 1024 : 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, ['sign', 'verify']) as CryptoKeyPair
    default: return await subtle.generateKey(EC, true, ['sign', 'verify']) as CryptoKeyPair
  }
}

function escapeDn (v: string): string {
  return v.replace(/([,+"\\<>;=])/g, '\\$1')
}

/** Issues a leaf from `issuer` with exactly the defects asked for. */
export async function forge (issuer: Issuer, o: ForgeOptions = {}): Promise<Forged> {
  const id = o.id ?? 'forged-1'
  const kind = o.kind ?? 'device'
  const trustDomain = o.trustDomain ?? 'aedes-zt.local'
  const cns = o.cns ?? [id]
  const uris = o.uris ?? [`spiffe://${trustDomain}/${kind}/${id}`]
  const keys = await leafKeys(o.key)
  const subject = [...cns.map((c) => `CN=${escapeDn(c)}`), ...(o.ous ?? []).map((g) => `OU=${escapeDn(g)}`)].join(', ')
  const issuerSki = issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension)
  const extensions: x509.Extension[] = []
  if (o.basicConstraints !== false) extensions.push(new x509.BasicConstraintsExtension(o.ca === true, undefined, true))
  extensions.push(new x509.KeyUsagesExtension(o.keyUsage ?? x509.KeyUsageFlags.digitalSignature, true))
  if (o.eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(o.eku ?? [x509.ExtendedKeyUsage.clientAuth], false))
  if (uris.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: 'url' as const, value })), false))
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey))
  if (issuerSki !== null) extensions.push(new x509.AuthorityKeyIdentifierExtension(issuerSki.keyId))
  const serial = '4' + randomBytes(12).toString('hex')
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: subject === '' ? undefined as unknown as string : subject,
    issuer: issuer.cert.subjectName,
    notBefore: o.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: o.notAfter ?? new Date(Date.now() + 86_400_000),
    publicKey: keys.publicKey,
    signingKey: issuer.key,
    signingAlgorithm: issuer.alg,
    extensions,
  })
  const pkcs8 = Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey))
  const keyPem = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string
  return { certPem: cert.toString('pem'), keyPem, serial, der: new Uint8Array(cert.rawData) }
}
