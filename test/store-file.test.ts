// The file store: the shared CertStore contract, plus what only files can get wrong (torn lines, stale locks).
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ZtError } from '../common/errors.js'
import { FILE_STORE_FILES, openFileStore, type FileCertStore } from '../store/file.js'
import { storeContract, testCert } from './store-contract.js'

storeContract('file', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-store-'))
  const store = await openFileStore(path.join(dir, 'store'))
  const others: FileCertStore[] = []
  return {
    store,
    openSecond: async () => { const s = await openFileStore(path.join(dir, 'store')); others.push(s); return s },
    async cleanup () {
      await store.close()
      await fs.rm(dir, { recursive: true, force: true })
    },
  }
})

describe('file store specifics', () => {
  let dir: string
  let store: FileCertStore
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-store-'))
    store = await openFileStore(dir)
  })
  afterEach(async () => {
    await store.close()
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('ignores a torn last line (a crashed writer) and cuts it off on the next write', async () => {
    const a = testCert()
    const b = testCert()
    await store.recordIssued([a, b])
    const { cursor } = await store.loadRevocations()
    await fs.appendFile(path.join(dir, FILE_STORE_FILES.revocations), '{"serial":"12')
    expect(await store.readFeed(cursor, { blockMs: 0 })).toEqual([])
    expect((await store.loadRevocations()).revocations).toEqual([])
    await store.revoke([a.serial], 'keyCompromise')
    const text = await fs.readFile(path.join(dir, FILE_STORE_FILES.revocations), 'utf8')
    expect(text.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { serial: string }).serial)).toEqual([a.serial])
    expect((await store.readFeed(cursor, { blockMs: 0 })).map((e) => e.revocation.serial)).toEqual([a.serial])
  })

  it('breaks a lock left by a dead process and waits for a live one', async () => {
    await fs.writeFile(path.join(dir, FILE_STORE_FILES.lock), `999999999 ${Date.now()}\n`)
    expect(await store.nextCrlNumber()).toBe(1n)
    const impatient = await openFileStore(dir, { lockTimeoutMs: 200 })
    try {
      // A lock held by a live process (ours, seen from another store instance) is waited for, then refused.
      await fs.writeFile(path.join(dir, FILE_STORE_FILES.lock), `${process.ppid} ${Date.now()}\n`)
      let caught: unknown
      try { await impatient.nextCrlNumber() } catch (err) { caught = err }
      expect((caught as ZtError).code).toBe('ZT_STORE_UNAVAILABLE')
      expect((caught as ZtError).message).toMatch(/lock/)
    } finally {
      await fs.rm(path.join(dir, FILE_STORE_FILES.lock), { force: true })
      await impatient.close()
    }
  })

  it('breaks an empty lock once it is older than staleLockMs (a crash between creating and writing it)', async () => {
    const lock = path.join(dir, FILE_STORE_FILES.lock)
    await fs.writeFile(lock, '')
    const old = new Date(Date.now() - 60_000)
    await fs.utimes(lock, old, old)
    const quick = await openFileStore(dir, { lockTimeoutMs: 2_000, staleLockMs: 30_000 })
    try {
      expect(await quick.nextCrlNumber()).toBe(1n)
    } finally {
      await quick.close()
    }
  })

  it('refuses cursors it never handed out', async () => {
    const c = testCert()
    await store.recordIssued([c])
    await store.revoke([c.serial], 'unspecified')
    for (const bad of ['abc', '-1', '3', '999999']) {
      let caught: unknown
      try { await store.readFeed(bad, { blockMs: 0 }) } catch (err) { caught = err }
      expect((caught as ZtError).code, bad).toBe('ZT_BAD_ARGUMENT')
    }
  })

  it('refuses to record a serial twice', async () => {
    const c = testCert()
    await store.recordIssued([c])
    let caught: unknown
    try { await store.recordIssued([{ ...c, id: 'other' }]) } catch (err) { caught = err }
    expect((caught as ZtError).code).toBe('ZT_BAD_ARGUMENT')
    expect((await store.getIssued(c.serial))?.id).toBe(c.id)
  })

  it('keeps its files private and resolves a blocked reader on close', async () => {
    expect((await fs.stat(path.join(dir, FILE_STORE_FILES.inventory))).mode & 0o777).toBe(0o600)
    const { cursor } = await store.loadRevocations()
    const started = Date.now()
    const waiting = store.readFeed(cursor, { blockMs: 10_000 })
    await new Promise((resolve) => setTimeout(resolve, 50))
    await store.close()
    expect(await waiting).toEqual([])
    expect(Date.now() - started).toBeLessThan(2000)
  })
})
