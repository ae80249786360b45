// The CA home: its layout, `ca init` (keys, CA certificates, broker certificate) and loading it back.
import { randomBytes, X509Certificate } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { ZtError } from '../common/errors.js'
import { checkTrustDomain, DEFAULT_TRUST_DOMAIN } from '../common/ids.js'
import { exists, readFileOrThrow, writeFileAtomic } from './fsutil.js'
import { checkKeyType, exportEncryptedPkcs8Pem, exportPkcs8Pem, generateKeyPair, isKeyType, type KeyType } from './keys.js'
import { createIssuingCert, createRootCert, createServerCert, DEFAULT_SERVER_NAMES, serverSanEntries } from './profile.js'

export interface HomeConfig {
  /** Subject CN prefix of the CAs, e.g. "aedes-zt" → "aedes-zt Root CA", "aedes-zt Issuing CA". */
  name: string
  trustDomain: string
  keyType: KeyType
  /** A dev home keeps its passphrase in private/passphrase (mode 0600); only `npm start` makes one. */
  dev: boolean
  /** CRL nextUpdate = thisUpdate + crlDays (default 7). */
  crlDays: number
}

/** Absolute paths of a home's files (the layout is part of the product contract). */
export interface HomePaths {
  home: string
  config: string
  /** root CA certificate: what clients pass as --cafile */
  rootCert: string
  /** issuing CA + root, PEM */
  chain: string
  /** broker certificate + issuing CA, PEM */
  serverCert: string
  serverKey: string
  privateDir: string
  rootKey: string
  issuingKey: string
  issuingCert: string
  passphrase: string
  /** Directory of the file store (inventory, revocations, CRL); unused when the store is Redis. */
  storeDir: string
}

/** A home loaded without its passphrase: enough for a broker to verify clients and serve TLS. */
export interface LoadedHome {
  paths: HomePaths
  config: HomeConfig
  rootPem: string
  issuingPem: string
  /** DER of the issuing CA certificate, for exact issuer comparison. */
  issuingDer: Uint8Array
  serverCertPem: string
  serverKeyPem: string
}

export interface InitOptions {
  /** @default "aedes-zt" */
  name?: string
  /** @default "aedes-zt.local" */
  trustDomain?: string
  /** Key type of the root, issuing and server keys. @default "ec-p256" */
  keyType?: KeyType
  /** DNS names and IP addresses for the broker certificate's SAN (default: localhost, 127.0.0.1, ::1). */
  serverNames?: string[]
  /** Required unless dev is true (then generated and kept in private/passphrase). */
  passphrase?: string
  dev?: boolean
  /** @default 7 */
  crlDays?: number
}

export const DEFAULT_CA_NAME = 'aedes-zt'
export const DEFAULT_CRL_DAYS = 7
/** Short passphrases make the encrypted keys guessable offline; 8 is a floor, not a recommendation. */
export const MIN_PASSPHRASE_LENGTH = 8

export function homePaths (home: string): HomePaths {
  const dir = path.resolve(home)
  const privateDir = path.join(dir, 'private')
  return {
    home: dir,
    config: path.join(dir, 'config.json'),
    rootCert: path.join(dir, 'ca.pem'),
    chain: path.join(dir, 'ca-chain.pem'),
    serverCert: path.join(dir, 'server.pem'),
    serverKey: path.join(dir, 'server.key'),
    privateDir,
    rootKey: path.join(privateDir, 'root.key'),
    issuingKey: path.join(privateDir, 'issuing.key'),
    issuingCert: path.join(dir, 'issuing.pem'),
    passphrase: path.join(privateDir, 'passphrase'),
    storeDir: path.join(dir, 'store'),
  }
}

export function checkPassphrase (passphrase: string, operation: string): string {
  if (passphrase.length < MIN_PASSPHRASE_LENGTH) {
    throw new ZtError('ZT_BAD_PASSPHRASE', `${operation}: the CA passphrase must be at least ${MIN_PASSPHRASE_LENGTH} characters`)
  }
  return passphrase
}

/** A CA name goes into Subject CNs (at most 64 characters with the " Issuing CA" suffix). */
function checkCaName (name: string, operation: string): string {
  if (name.length === 0 || name.length > 50 || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new ZtError('ZT_BAD_ARGUMENT', `${operation}: CA name ${JSON.stringify(name)} must be 1-50 printable characters`, { name })
  }
  return name
}

/**
 * Creates a CA home: root and issuing CA (encrypted keys in private/), the broker's server certificate,
 * config.json last so a home is only loadable once complete. Refuses a home that already holds a CA.
 */
export async function initHome (home: string, options: InitOptions = {}): Promise<LoadedHome> {
  const op = 'ca init'
  const paths = homePaths(home)
  const dev = options.dev === true
  const name = checkCaName(options.name ?? DEFAULT_CA_NAME, op)
  const trustDomain = checkTrustDomain(options.trustDomain ?? DEFAULT_TRUST_DOMAIN, op)
  const keyType = checkKeyType(options.keyType ?? 'ec-p256', op)
  const serverNames = options.serverNames !== undefined && options.serverNames.length > 0 ? options.serverNames : [...DEFAULT_SERVER_NAMES]
  serverSanEntries(serverNames, op)
  const crlDays = options.crlDays ?? DEFAULT_CRL_DAYS
  if (!Number.isInteger(crlDays) || crlDays < 1 || crlDays > 365) throw new ZtError('ZT_BAD_ARGUMENT', `${op}: crlDays ${crlDays} must be an integer from 1 to 365`)

  let passphrase: string
  if (options.passphrase !== undefined && options.passphrase !== '') {
    passphrase = checkPassphrase(options.passphrase, op)
  } else if (dev) {
    passphrase = randomBytes(24).toString('base64url')
  } else {
    throw new ZtError('ZT_NO_PASSPHRASE', `${op}: set AEDES_ZT_CA_PASSPHRASE to the passphrase that will encrypt the CA keys (only a dev home, --dev, keeps a generated one)`)
  }

  for (const file of [paths.config, paths.rootCert, paths.privateDir]) {
    if (await exists(file)) throw new ZtError('ZT_HOME_EXISTS', `${op}: ${paths.home} already holds a CA (${path.basename(file)} exists); refusing to overwrite it`, { home: paths.home })
  }

  const now = new Date()
  const rootKeys = await generateKeyPair(keyType)
  const issuingKeys = await generateKeyPair(keyType)
  const serverKeys = await generateKeyPair(keyType)
  const root = await createRootCert(name, rootKeys, keyType, now)
  const issuing = await createIssuingCert(name, issuingKeys.publicKey, root, rootKeys.privateKey, keyType, now)
  const server = await createServerCert(serverNames, serverKeys.publicKey, issuing, issuingKeys.privateKey, keyType, keyType, now)
  const rootPem = root.toString('pem') + '\n'
  const issuingPem = issuing.toString('pem') + '\n'
  const serverPem = server.toString('pem') + '\n' + issuingPem
  const serverKeyPem = await exportPkcs8Pem(serverKeys.privateKey)
  const config: HomeConfig = { name, trustDomain, keyType, dev, crlDays }

  try {
    await fs.mkdir(paths.home, { recursive: true, mode: 0o755 })
    // mkdir without recursive fails if private/ exists: two concurrent inits cannot both get past here.
    await fs.mkdir(paths.privateDir, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new ZtError('ZT_HOME_EXISTS', `${op}: ${paths.home} already holds a CA (private/ exists); refusing to overwrite it`, { home: paths.home })
    throw new ZtError('ZT_IO', `${op}: cannot create ${paths.home} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { home: paths.home }, { cause: err })
  }
  await fs.chmod(paths.privateDir, 0o700)
  const written: string[] = []
  const write = async (file: string, data: string, mode: number): Promise<void> => {
    await writeFileAtomic(file, data, { mode, noClobber: true, operation: op })
    written.push(file)
  }
  try {
    if (dev) await write(paths.passphrase, passphrase + '\n', 0o600)
    await write(paths.rootKey, await exportEncryptedPkcs8Pem(rootKeys.privateKey, passphrase), 0o600)
    await write(paths.issuingKey, await exportEncryptedPkcs8Pem(issuingKeys.privateKey, passphrase), 0o600)
    await write(paths.rootCert, rootPem, 0o644)
    await write(paths.issuingCert, issuingPem, 0o644)
    await write(paths.chain, issuingPem + rootPem, 0o644)
    await write(paths.serverKey, serverKeyPem, 0o600)
    await write(paths.serverCert, serverPem, 0o644)
    await write(paths.config, JSON.stringify(config, null, 2) + '\n', 0o644)
  } catch (err) {
    // Leave no half-made home behind: the next `ca init` would refuse it and nothing could load it.
    for (const file of written) await fs.rm(file, { force: true }).catch(() => {})
    await fs.rmdir(paths.privateDir).catch(() => {})
    throw err
  }
  return await loadHome(paths.home)
}

function parseConfig (text: string, file: string): HomeConfig {
  const op = 'load home'
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new ZtError('ZT_NO_HOME', `${op}: ${file} is not valid JSON`, { file })
  }
  const c = raw as Partial<Record<keyof HomeConfig, unknown>>
  if (typeof c !== 'object' || c === null || typeof c.name !== 'string' || typeof c.trustDomain !== 'string' ||
      typeof c.keyType !== 'string' || !isKeyType(c.keyType) || typeof c.dev !== 'boolean') {
    throw new ZtError('ZT_NO_HOME', `${op}: ${file} is missing name, trustDomain, keyType or dev`, { file })
  }
  const crlDays = typeof c.crlDays === 'number' && Number.isInteger(c.crlDays) && c.crlDays > 0 ? c.crlDays : DEFAULT_CRL_DAYS
  return Object.freeze({ name: c.name, trustDomain: c.trustDomain, keyType: c.keyType, dev: c.dev, crlDays })
}

/** Loads a home's public parts and the broker's server key; no passphrase needed. */
export async function loadHome (home: string): Promise<LoadedHome> {
  const paths = homePaths(home)
  let configText: string
  try {
    configText = await fs.readFile(paths.config, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? ((await exists(paths.home)) ? 'holds no CA' : 'does not exist') : `cannot be read (${code ?? String(err)})`
    throw new ZtError('ZT_NO_HOME', `load home: ${paths.home} ${why}; create it with aedes-zt ca init --home ${home}`, { home: paths.home }, { cause: err })
  }
  const config = parseConfig(configText, paths.config)
  const op = 'load home'
  const rootPem = (await readFileOrThrow(paths.rootCert, op)).toString('utf8')
  const issuingPem = (await readFileOrThrow(paths.issuingCert, op)).toString('utf8')
  let issuingDer: Uint8Array
  try {
    // node:crypto's parser (OpenSSL) rather than @peculiar/x509: loading a home must not load the X.509 builder library,
    // which every `cert issue-bulk`, `cert list` and `cert revoke` run would pay for at start-up.
    issuingDer = new Uint8Array(new X509Certificate(issuingPem).raw)
  } catch (err) {
    throw new ZtError('ZT_NO_HOME', `${op}: ${paths.issuingCert} is not a certificate`, { file: paths.issuingCert }, { cause: err })
  }
  return {
    paths,
    config,
    rootPem,
    issuingPem,
    issuingDer,
    serverCertPem: (await readFileOrThrow(paths.serverCert, op)).toString('utf8'),
    serverKeyPem: (await readFileOrThrow(paths.serverKey, op)).toString('utf8'),
  }
}
