// The file store: the shared CertStore contract, plus what only files can get wrong (torn lines, stale locks).
import { spawn } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { ZtError } from '../common/errors.js'
import { FILE_STORE_FILES, openFileStore, type FileCertStore } from '../store/file.js'
import { FileLock } from '../store/file-lock.js'
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

/** A CRL number taken by a fresh store that gives up on the lock after 2 s. */
async function crlNumberFrom (dir: string, staleLockMs: number): Promise<bigint> {
  const quick = await openFileStore(dir, { lockTimeoutMs: 2_000, staleLockMs })
  try {
    return await quick.nextCrlNumber()
  } finally {
    await quick.close()
  }
}

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

  it('breaks a lock left by an earlier process with our own pid (a restarted container), at once', async () => {
    const lockFile = path.join(dir, FILE_STORE_FILES.lock)
    const hold = await new FileLock(lockFile, { timeoutMs: 1000, staleMs: 60_000 }).acquire('test')
    const line = await fs.readFile(lockFile, 'utf8')
    expect(line).toMatch(new RegExp(`^${process.pid} \\S+ \\S+ [0-9a-f]+\\n$`))
    expect(await hold.release()).toBe(true)
    // The same owner line, but no longer held by anyone in this process: only a dead incarnation could have left it.
    await fs.writeFile(lockFile, line)
    expect(await crlNumberFrom(dir, 60_000)).toBe(1n)
  })

  it('waits for a live holder, then refuses naming it', async () => {
    const hold = await new FileLock(path.join(dir, FILE_STORE_FILES.lock), { timeoutMs: 1000, staleMs: 50 }).acquire('test')
    const impatient = await openFileStore(dir, { lockTimeoutMs: 300, staleLockMs: 50 })
    try {
      let caught: unknown
      try { await impatient.nextCrlNumber() } catch (err) { caught = err }
      expect((caught as ZtError).code).toBe('ZT_STORE_UNAVAILABLE')
      expect((caught as ZtError).message).toContain(`the store lock ${path.join(dir, FILE_STORE_FILES.lock)} is held by process ${process.pid} on this host`)
    } finally {
      expect(await hold.release()).toBe(true)
      await impatient.close()
    }
    expect(await store.nextCrlNumber()).toBe(1n)
  })

  it('a holder whose lock was replaced leaves the new one alone and says so', async () => {
    const lockFile = path.join(dir, FILE_STORE_FILES.lock)
    const hold = await new FileLock(lockFile, { timeoutMs: 1000, staleMs: 60_000 }).acquire('test')
    await fs.rename(lockFile, `${lockFile}.moved`)
    await fs.writeFile(lockFile, 'someone else\n')
    expect(await hold.release()).toBe(false)
    expect(await fs.readFile(lockFile, 'utf8')).toBe('someone else\n')
  })

  it('breaks an empty lock once it is older than staleLockMs (a crash between creating and writing it)', async () => {
    const lock = path.join(dir, FILE_STORE_FILES.lock)
    await fs.writeFile(lock, '')
    const old = new Date(Date.now() - 60_000)
    await fs.utimes(lock, old, old)
    expect(await crlNumberFrom(dir, 30_000)).toBe(1n)
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

  // The shared contract covers a serial recorded twice through one instance; here the inventory file changed under it.
  it('refuses to record a serial another instance recorded since this one last looked', async () => {
    const c = testCert()
    await store.recordIssued([c])
    const other = await openFileStore(dir)
    try {
      const d = testCert()
      await other.recordIssued([d])
      let caught: unknown
      try { await store.recordIssued([{ ...d, id: 'other' }]) } catch (err) { caught = err }
      expect((caught as ZtError).code).toBe('ZT_BAD_ARGUMENT')
      expect((caught as ZtError).message).toBe(`record issued: serial ${d.serial} is already in the inventory`)
      expect((await store.getIssued(d.serial))?.id).toBe(d.id)
      expect((await fs.readFile(path.join(dir, FILE_STORE_FILES.inventory), 'utf8')).split('\n').filter(Boolean)).toHaveLength(2)
    } finally {
      await other.close()
    }
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

/** test/helpers/store-child.mjs runs the built store: dist/ must be at least as new as the sources. */
const CHILD = fileURLToPath(new URL('./helpers/store-child.mjs', import.meta.url))
const ROOT = path.resolve(path.dirname(CHILD), '../..')

interface Child { lines: string[], waitFor (line: string): Promise<void>, exited: Promise<number | null>, kill (): void }

function startChild (args: string[]): Child {
  const child = spawn(process.execPath, [CHILD, ...args], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  const waiters = new Set<() => void>()
  let pending = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => {
    pending += d.toString('utf8')
    const parts = pending.split('\n')
    pending = parts.pop() ?? ''
    lines.push(...parts)
    for (const w of waiters) w()
  })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString('utf8') })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => { for (const w of waiters) w(); resolve(c) }))
  return {
    lines,
    exited: exited.then((c) => { if (c !== 0 && c !== null) throw new Error(`store-child ${args.join(' ')} exited ${c}: ${stderr}`); return c }),
    kill: () => { child.kill('SIGKILL') },
    waitFor: async (line) => {
      await new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (lines.includes(line)) { waiters.delete(check); resolve() } else if (child.exitCode !== null) reject(new Error(`store-child exited before "${line}": ${stderr}`))
        }
        waiters.add(check)
        check()
      })
    },
  }
}

/** Checks the trace the children wrote: every "+w" is followed by its own "-w" before anyone else enters. */
function assertNoInterleaving (trace: string[]): void {
  for (let i = 0; i < trace.length; i += 2) {
    const enter = trace[i] ?? ''
    expect(enter.startsWith('+'), `line ${i}: ${enter}`).toBe(true)
    if (i + 1 < trace.length) expect(trace[i + 1], `line ${i + 1}`).toBe(`-${enter.slice(1)}`)
  }
}

describe('file store across processes', () => {
  let tmp: string
  let dir: string
  beforeAll(async () => {
    for (const f of ['file', 'file-lock']) {
      const [src, built] = await Promise.all([fs.stat(path.join(ROOT, 'store', `${f}.ts`)), fs.stat(path.join(ROOT, 'dist', 'store', `${f}.js`)).catch(() => null)])
      if (built === null || built.mtimeMs < src.mtimeMs) throw new Error('dist/ is missing or older than store/: run `npm run build`')
    }
  })
  beforeEach(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-lock-'))
    dir = path.join(tmp, 'store')
    await (await openFileStore(dir)).close()
    await fs.writeFile(path.join(tmp, 'trace'), '')
  })
  afterEach(async () => {
    await fs.rm(tmp, { recursive: true, force: true })
  })

  async function readTrace (): Promise<string[]> {
    return (await fs.readFile(path.join(tmp, 'trace'), 'utf8')).split('\n').filter(Boolean)
  }

  /** Every record and CRL number the workers made is there once, in each worker's order, and nothing else is. */
  async function assertComplete (workers: Child[], perWorker: number): Promise<void> {
    const total = workers.length * perWorker
    const numbers = workers.flatMap((w) => (JSON.parse(w.lines.at(-1) ?? '{}') as { numbers: string[] }).numbers)
    expect(numbers.map(Number).sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    const lines = (await fs.readFile(path.join(dir, FILE_STORE_FILES.inventory), 'utf8')).split('\n')
    expect(lines.pop()).toBe('')
    const records = lines.map((l) => JSON.parse(l) as { serial: string, id: string })
    expect(records).toHaveLength(total)
    expect(new Set(records.map((r) => r.serial)).size).toBe(total)
    workers.forEach((_, w) => {
      expect(records.filter((r) => r.id.startsWith(`w${w}-`)).map((r) => r.id)).toEqual(Array.from({ length: perWorker }, (_, i) => `w${w}-${i}`))
    })
    const reopened = await openFileStore(dir)
    try {
      expect(await reopened.list()).toHaveLength(total)
      expect(await reopened.nextCrlNumber()).toBe(BigInt(total + 1))
    } finally {
      await reopened.close()
    }
    // Breakers clean up after themselves: no claims or moved locks are left behind, nor the lock itself.
    expect((await fs.readdir(dir)).filter((f) => f.startsWith(FILE_STORE_FILES.lock))).toEqual([])
  }

  it('eight processes writing at once lose, duplicate and interleave nothing', async () => {
    const workers = Array.from({ length: 8 }, (_, w) => startChild(['work', dir, String(w), '25', '30000']))
    await Promise.all(workers.map(async (w) => await w.exited))
    await assertComplete(workers, 25)
    const trace = await readTrace()
    expect(trace).toHaveLength(8 * 25 * 2)
    assertNoInterleaving(trace)
  })

  for (const host of ['this host', 'another host']) {
    it(`breaks the lock of a holder on ${host} killed while holding it, and work goes on`, async () => {
      const holder = startChild(['hold', dir, '300', '0', ...(host === 'this host' ? [] : ['elsewhere'])])
      await holder.waitFor('held')
      const workers = Array.from({ length: 4 }, (_, w) => startChild(['work', dir, String(w), '5', '300']))
      await Promise.all(workers.map(async (w) => await w.waitFor('ready')))
      holder.kill()
      await holder.exited
      await Promise.all(workers.map(async (w) => await w.exited))
      await assertComplete(workers, 5)
      const trace = await readTrace()
      expect(trace[0]).toBe('+hold')
      assertNoInterleaving(trace.slice(1))
    })
  }

  it('of many processes breaking the same dead holder\'s lock at once, one at a time gets in', async () => {
    for (let round = 0; round < 3; round++) {
      await fs.rm(path.join(tmp, 'go'), { force: true })
      const holder = startChild(['hold', dir, '30000', '0'])
      await holder.waitFor('held')
      holder.kill()
      await holder.exited
      const racers = Array.from({ length: 6 }, (_, w) => startChild(['race', dir, `${round}.${w}`]))
      await Promise.all(racers.map(async (r) => await r.waitFor('ready')))
      await fs.writeFile(path.join(tmp, 'go'), '')
      await Promise.all(racers.map(async (r) => await r.exited))
    }
    const trace = await readTrace()
    expect(trace.filter((l) => l === '+hold')).toHaveLength(3)
    const entries = trace.filter((l) => l !== '+hold')
    expect(entries).toHaveLength(3 * 6 * 2)
    assertNoInterleaving(entries)
    expect((await fs.readdir(dir)).filter((f) => f.startsWith(FILE_STORE_FILES.lock))).toEqual([])
  })

  // A holder on this host is judged by its pid alone (here its heartbeat, every 7.5 s, is far too slow to matter);
  // one elsewhere by its heartbeat (a quarter of the stale age).
  for (const [host, holderStaleMs, staleMs, holdMs] of [['this host', 30_000, 100, 1000], ['another host', 1500, 1500, 4500]] as const) {
    it(`never breaks a live holder on ${host} that keeps the lock longer than the stale age`, async () => {
      const holder = startChild(['hold', dir, String(holderStaleMs), String(holdMs), ...(host === 'this host' ? [] : ['elsewhere'])])
      await holder.waitFor('held')
      const waiter = await openFileStore(dir, { staleLockMs: staleMs, lockTimeoutMs: 30_000 })
      try {
        expect(await waiter.nextCrlNumber()).toBe(1n)
        // Let in only once the holder had left its critical section.
        expect(await readTrace()).toEqual(['+hold', '-hold'])
      } finally {
        await waiter.close()
      }
      await holder.exited
      expect(holder.lines).toContain('released true')
    })
  }
})
