// Key types the CA issues for, key generation, strength checks, and encrypted PKCS#8 storage of CA keys.
import { createPrivateKey, createPublicKey, generateKeyPair as generateKeyPairCb, webcrypto, type KeyObject } from 'node:crypto'
import { promisify } from 'node:util'
import { ZtError } from '../common/errors.js'

// The compiler has no DOM lib: WebCrypto types come from Node's namespace.
export type CryptoKey = webcrypto.CryptoKey
export type CryptoKeyPair = webcrypto.CryptoKeyPair
type Algorithm = webcrypto.Algorithm
type EcdsaParams = webcrypto.EcdsaParams

export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096'

export const KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096']

const subtle = webcrypto.subtle
const generateKeyPairAsync = promisify(generateKeyPairCb)

export function isKeyType (value: string): value is KeyType {
  return (KEY_TYPES as readonly string[]).includes(value)
}

export function checkKeyType (value: string, operation: string): KeyType {
  if (!isKeyType(value)) {
    throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: key type ${JSON.stringify(value)} is not one of ${KEY_TYPES.join(', ')}`, { keyType: value })
  }
  return value
}

/** WebCrypto parameters for generating and importing a key of each type. */
function keyAlgorithm (type: KeyType): webcrypto.RsaHashedImportParams & webcrypto.RsaHashedKeyGenParams | webcrypto.EcKeyImportParams & webcrypto.EcKeyGenParams {
  switch (type) {
    case 'ec-p256': return { name: 'ECDSA', namedCurve: 'P-256' }
    case 'ec-p384': return { name: 'ECDSA', namedCurve: 'P-384' }
    default: {
      const bits = Number(type.slice(4))
      return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) }
    }
  }
}

/** The algorithm a key of this type signs certificates and CRLs with (hash matched to the curve's strength). */
export function signingAlgorithm (type: KeyType): Algorithm | EcdsaParams {
  switch (type) {
    case 'ec-p256': return { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams
    case 'ec-p384': return { name: 'ECDSA', hash: 'SHA-384' } as EcdsaParams
    default: return { name: 'RSASSA-PKCS1-v1_5' }
  }
}

export async function generateKeyPair (type: KeyType): Promise<CryptoKeyPair> {
  return await subtle.generateKey(keyAlgorithm(type), true, ['sign', 'verify']) as CryptoKeyPair
}

/** Imports a PKCS#8 DER private key as a non-extractable signing key. */
export async function importSigningKey (pkcs8: Uint8Array, type: KeyType): Promise<CryptoKey> {
  return await subtle.importKey('pkcs8', pkcs8, keyAlgorithm(type), false, ['sign'])
}

export async function exportPkcs8Der (key: CryptoKey): Promise<Uint8Array> {
  return new Uint8Array(await subtle.exportKey('pkcs8', key))
}

/** Unencrypted PKCS#8 PEM: for device keys handed to the caller and the broker's server key. */
export async function exportPkcs8Pem (key: CryptoKey): Promise<string> {
  const der = await exportPkcs8Der(key)
  return createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string
}

/** Encrypted PKCS#8 PEM (PBES2, AES-256-CBC): how CA keys rest on disk. */
export async function exportEncryptedPkcs8Pem (key: CryptoKey, passphrase: string): Promise<string> {
  const der = await exportPkcs8Der(key)
  return createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' })
    .export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase }) as string
}

/** A CA key loaded for both signers: node:crypto (leaf hot path) and WebCrypto (@peculiar/x509, CRLs). */
export interface SigningKeys {
  keyObject: KeyObject
  /** The same key imported into WebCrypto, on first use: only CRL signing needs it, and issuance should not pay for it. */
  cryptoKey (): Promise<CryptoKey>
}

/**
 * Decrypts an encrypted PKCS#8 PEM and imports it for signing.
 * A wrong passphrase is ZT_BAD_PASSPHRASE; the passphrase never appears in the message.
 */
export async function loadEncryptedKey (pem: string, passphrase: string, type: KeyType, what: string, operation: string): Promise<SigningKeys> {
  let keyObject: KeyObject
  try {
    keyObject = createPrivateKey({ key: pem, format: 'pem', passphrase })
  } catch {
    throw new ZtError('ZT_BAD_PASSPHRASE', `${operation}: the CA passphrase does not decrypt the ${what} key`, { key: what })
  }
  // What importing into WebCrypto used to catch at once: a key that is not of the home's type.
  const actual = describePublicKey(keyObject, operation)
  if (actual.type !== type) {
    throw new ZtError('ZT_NO_HOME', `${operation}: the ${what} key is ${actual.label}, but the home says ${type}`, { key: what })
  }
  let imported: Promise<CryptoKey> | undefined
  return {
    keyObject,
    cryptoKey: async () => await (imported ??= importSigningKey(new Uint8Array(keyObject.export({ format: 'der', type: 'pkcs8' })), type)),
  }
}

export interface KeyDescription {
  /** e.g. "EC P-256", "RSA 2048" */
  label: string
  type: KeyType
}

const CURVES: Record<string, { type: KeyType, label: string }> = {
  prime256v1: { type: 'ec-p256', label: 'EC P-256' },
  secp384r1: { type: 'ec-p384', label: 'EC P-384' },
}

/**
 * Refuses any public key the CA would not issue for (ZT_WEAK_KEY): RSA below 2048 or above 4096 bits,
 * curves other than P-256/P-384, and other algorithms. Takes the SubjectPublicKeyInfo DER or a KeyObject.
 */
export function describePublicKey (spki: Uint8Array | KeyObject, operation: string): KeyDescription {
  let key: KeyObject
  if (spki instanceof Uint8Array) {
    try {
      key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' })
    } catch (err) {
      throw new ZtError('ZT_BAD_CSR', `${operation}: the public key cannot be read (${err instanceof Error ? err.message : String(err)})`, {}, { cause: err })
    }
  } else {
    key = spki
  }
  const details = key.asymmetricKeyDetails ?? {}
  if (key.asymmetricKeyType === 'ec') {
    const curve = CURVES[details.namedCurve ?? '']
    if (curve === undefined) {
      throw new ZtError('ZT_WEAK_KEY', `${operation}: EC curve ${details.namedCurve ?? 'unknown'} is not accepted (P-256 or P-384)`, { curve: details.namedCurve })
    }
    return curve
  }
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0
    if (bits < 2048) throw new ZtError('ZT_WEAK_KEY', `${operation}: RSA key of ${bits} bits is too weak (at least 2048)`, { bits })
    if (bits > 4096) throw new ZtError('ZT_WEAK_KEY', `${operation}: RSA key of ${bits} bits is not accepted (2048 to 4096)`, { bits })
    // Round down to a listed size only for the label: 2049..3071-bit keys are as strong as 2048.
    const type: KeyType = bits >= 4096 ? 'rsa-4096' : bits >= 3072 ? 'rsa-3072' : 'rsa-2048'
    return { type, label: `RSA ${bits}` }
  }
  throw new ZtError('ZT_WEAK_KEY', `${operation}: key algorithm ${key.asymmetricKeyType ?? 'unknown'} is not accepted (EC P-256, P-384 or RSA 2048-4096)`, { algorithm: key.asymmetricKeyType })
}

/** Device key pair from node:crypto, in the forms issuance needs (SPKI DER for the certificate, PKCS#8 PEM for the device). */
export async function generateDeviceKey (type: KeyType): Promise<{ spki: Uint8Array, pkcs8Pem: string }> {
  const { publicKey, privateKey } = type.startsWith('ec')
    ? await generateKeyPairAsync('ec', { namedCurve: type === 'ec-p384' ? 'P-384' : 'P-256' })
    : await generateKeyPairAsync('rsa', { modulusLength: Number(type.slice(4)) })
  return {
    spki: new Uint8Array(publicKey.export({ format: 'der', type: 'spki' })),
    pkcs8Pem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
  }
}
