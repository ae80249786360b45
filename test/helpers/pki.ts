// Test fixture: a throw-away CA home in a temp dir (file store), and device certificates issued from it.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { initHome, openAuthority, type Authority, type InitOptions, type IssueRequest, type KeyType } from '../../ca/index.js'
import type { Kind } from '../../common/ids.js'
import type { CertStore } from '../../store/types.js'

/** Fixed and obviously fake: only ever encrypts keys of temp test CAs. */
export const TEST_PASSPHRASE = 'test-passphrase-not-secret'

export interface MakeTestCaOptions {
  name?: string
  trustDomain?: string
  keyType?: KeyType
  serverNames?: string[]
  /** Use this store instead of the home's file store (the fixture does not close it). */
  store?: CertStore
  /** Redis URL for the store, when store/redis.ts exists. */
  redisUrl?: string
}

export interface IssueDeviceOptions {
  /** @default "device" */
  kind?: Kind
  groups?: string[]
  days?: number
  /** Issue from this CSR (PEM) instead of generating a key; keyPem is then '' */
  csr?: string
  keyType?: KeyType
}

export interface IssuedDevice {
  certPem: string
  /** PKCS#8 PEM of the device key ('' when issued from a CSR). */
  keyPem: string
  /** Leaf + issuing CA. */
  bundlePem: string
  /** Canonical serial (lower-case hex). */
  serial: string
}

export interface TestCa {
  /** Absolute path of the temp home. */
  home: string
  authority: Authority
  issueDevice (id: string, opts?: IssueDeviceOptions): Promise<IssuedDevice>
  /** Closes the authority (and its store) and removes the temp home. */
  cleanup (): Promise<void>
}

export async function makeTestCa (options: MakeTestCaOptions = {}): Promise<TestCa> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-ca-'))
  const home = path.join(dir, 'home')
  const init: InitOptions = { passphrase: TEST_PASSPHRASE }
  if (options.name !== undefined) init.name = options.name
  if (options.trustDomain !== undefined) init.trustDomain = options.trustDomain
  if (options.keyType !== undefined) init.keyType = options.keyType
  if (options.serverNames !== undefined) init.serverNames = options.serverNames
  await initHome(home, init)
  const authority = await openAuthority(home, {
    passphrase: TEST_PASSPHRASE,
    ...(options.store !== undefined ? { store: options.store } : {}),
    ...(options.redisUrl !== undefined ? { redisUrl: options.redisUrl } : {}),
  })
  return {
    home,
    authority,
    async issueDevice (id, opts = {}) {
      const req: IssueRequest = { id, kind: opts.kind ?? 'device' }
      if (opts.groups !== undefined) req.groups = opts.groups
      if (opts.days !== undefined) req.days = opts.days
      if (opts.csr !== undefined) req.csr = opts.csr
      else { req.generateKey = true; if (opts.keyType !== undefined) req.keyType = opts.keyType }
      const b = await authority.issue(req)
      return { certPem: b.certPem, keyPem: b.keyPem ?? '', bundlePem: b.bundlePem, serial: b.record.serial }
    },
    async cleanup () {
      await authority.close()
      await fs.rm(dir, { recursive: true, force: true })
    },
  }
}
