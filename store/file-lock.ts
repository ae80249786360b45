// The file store's cross-process lock: one lock file made with O_EXCL, broken only once its holder is really gone.
import { randomBytes } from 'node:crypto'
import { readFileSync, readlinkSync, promises as fs } from 'node:fs'
import os from 'node:os'
import { ZtError } from '../common/errors.js'

/*
 * The protocol.
 *
 * Taking. open(lock, O_CREAT | O_EXCL) and write one line, "pid host start token": host names this machine, boot and
 * pid namespace (so pids are only compared where they mean the same process); start is the process's start time (so
 * a reused pid is not taken for the holder); token is unique to this hold. The holder keeps the file open and touches
 * its mtime every staleMs/4 while it holds it: the heartbeat that processes unable to check its pid go by.
 *
 * Judging. A holder on this host is alive while its pid runs with the same start time (our own pid: while this
 * process holds that token), and its lock is never broken, however long it is held. A holder elsewhere (another
 * machine or container sharing the directory), or a lock without a readable owner (a crash between creating and
 * writing it), is gone once the file's mtime is older than staleMs.
 *
 * Breaking. Deleting a stale lock is a compare-and-delete the filesystem does not offer: two processes that judged
 * the same lock stale could each delete it, the second one deleting the first one's fresh lock. So a breaker first
 * claims that lock instance by creating `<lock>.<token>.break` with O_EXCL (one claimer per instance, ever; a claim
 * left by a crashed breaker is judged and broken the same way), checks the lock still is that instance, renames it to
 * `<lock>.<token>.stale` and verifies the renamed file is the one judged stale before deleting it. Nobody else
 * removes a judged instance, so the renamed file is it, unless its holder was alive elsewhere after all and released
 * it meanwhile: then the lock it moved is linked back. The lock is then taken again the normal way, with O_EXCL.
 *
 * Releasing. Only a lock that is still ours (same inode as our open file) is removed. Finding another one means ours
 * was broken while held (a holder elsewhere silent for staleMs), and release() says so.
 */

export interface FileLockOptions {
  /** Give up waiting after this long. */
  timeoutMs: number
  /** A lock whose holder cannot be checked by pid counts as abandoned once its mtime is older than this. */
  staleMs: number
  /** This machine's key in lock files (default: hostname, boot id and pid namespace). Another key reads as another host. */
  host?: string
}

export interface LockHold {
  /** Removes the lock; false when it was no longer ours (broken while held), and then leaves the new one alone. */
  release (): Promise<boolean>
}

interface Owner { pid: number, host: string, start: string, token: string }

/** What one read of a lock file saw: one inode, its content and mtime. */
interface Snapshot { ino: number, mtimeMs: number, text: string, owner: Owner | null }

const OWNER_LINE = /^([1-9][0-9]*) (\S+) (\S+) ([0-9a-f]+)\n$/

/** Random per process, then counted: unique tokens without a random draw per hold. */
const TOKEN_PREFIX = randomBytes(8).toString('hex')
let tokenCount = 0
/** Tokens of locks (and claims) this process holds or is taking: how a lock bearing our own pid is judged. */
const heldTokens = new Set<string>()

function readProcStat (pid: number | 'self'): string | null {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return null
  }
}

/** State and start time from /proc/PID/stat; the command name (field 2) may hold spaces and parentheses. */
function parseProcStat (text: string): { state: string, start: string } | null {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  const state = fields[0]
  const start = fields[19]
  return state === undefined || start === undefined ? null : { state, start }
}

const SELF_START = parseProcStat(readProcStat('self') ?? '')?.start ?? '-'

function hostKey (): string {
  const parts = [os.hostname()]
  try { parts.push(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().slice(0, 8)) } catch { /* not Linux */ }
  try { parts.push(/\[([0-9]+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '') } catch { /* not Linux */ }
  return parts.filter((p) => p !== '').join('/').replace(/\s/g, '_')
}

const HOST = hostKey()

/** Whether a process with this pid exists on this host (EPERM means it exists but is not ours). */
function pidExists (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Whether the process that wrote this owner line, on this host, still runs. */
async function holderRuns (owner: Owner): Promise<boolean> {
  if (owner.pid === process.pid) return heldTokens.has(owner.token)
  if (!pidExists(owner.pid)) return false
  // Without /proc, kill(0) is all we have; with it, a zombie or another start time means the holder is gone.
  if (SELF_START === '-') return true
  const text = await fs.readFile(`/proc/${owner.pid}/stat`, 'utf8').catch(() => null)
  const stat = text === null ? null : parseProcStat(text)
  if (stat === null) return false
  return stat.state !== 'Z' && stat.state !== 'X' && (owner.start === '-' || owner.start === stat.start)
}

async function readLock (file: string): Promise<Snapshot | null> {
  let handle: fs.FileHandle
  try {
    handle = await fs.open(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  try {
    const { ino, mtimeMs } = await handle.stat()
    const text = await handle.readFile('utf8')
    const m = OWNER_LINE.exec(text)
    const owner = m === null ? null : { pid: Number(m[1]), host: m[2] as string, start: m[3] as string, token: m[4] as string }
    return { ino, mtimeMs, text, owner }
  } finally {
    await handle.close()
  }
}

/** Names one lock instance: its token, or for a lock without one (empty, torn) its inode and mtime. */
function instanceId (s: Snapshot): string {
  return s.owner?.token ?? `${s.ino}-${Math.trunc(s.mtimeMs)}`
}

function sameInstance (a: Snapshot, b: Snapshot): boolean {
  return a.ino === b.ino && a.text === b.text && (a.owner !== null || a.mtimeMs === b.mtimeMs)
}

function describeHolder (s: Snapshot | null): string {
  if (s?.owner == null) return 'another process'
  return s.owner.host === HOST ? `process ${s.owner.pid} on this host` : `process ${s.owner.pid} on ${s.owner.host.split('/')[0] ?? ''}`
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function code (err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code
}

/** Creates `file` with O_EXCL holding `line`; the open handle is returned, or null when the file exists. */
async function createExclusive (file: string, line: string): Promise<fs.FileHandle | null> {
  let handle: fs.FileHandle
  try {
    handle = await fs.open(file, 'wx', 0o600)
  } catch (err) {
    if (code(err) === 'EEXIST') return null
    throw err
  }
  try {
    await handle.writeFile(line)
  } catch (err) {
    await handle.close().catch(() => {})
    await fs.unlink(file).catch(() => {})
    throw err
  }
  return handle
}

export class FileLock {
  private readonly timeoutMs: number
  private readonly staleMs: number
  private readonly host: string
  /** Our owner line up to the token; a start time is only known for this host's processes. */
  private readonly ownerPrefix: string

  constructor (readonly file: string, options: FileLockOptions) {
    this.timeoutMs = options.timeoutMs
    this.staleMs = options.staleMs
    this.host = options.host ?? HOST
    this.ownerPrefix = `${process.pid} ${this.host} ${this.host === HOST ? SELF_START : '-'} `
  }

  /** Takes the lock, breaking a stale one; rejects with ZT_STORE_UNAVAILABLE after timeoutMs. */
  async acquire (operation: string): Promise<LockHold> {
    const deadline = Date.now() + this.timeoutMs
    const token = `${TOKEN_PREFIX}${(tokenCount++).toString(16)}`
    // Registered before the file exists: another store in this process must never judge our fresh lock dead.
    heldTokens.add(token)
    try {
      for (;;) {
        const handle = await createExclusive(this.file, `${this.ownerPrefix}${token}\n`)
        if (handle !== null) return this.hold(handle, token)
        const holder = await this.breakIfStale(this.file, token)
        if (Date.now() > deadline) {
          throw new ZtError('ZT_STORE_UNAVAILABLE', `${operation}: the store lock ${this.file} is held by ${describeHolder(holder)} for more than ${this.timeoutMs} ms`, { lock: this.file })
        }
        if (holder !== null) await sleep(2 + Math.random() * 8)
      }
    } catch (err) {
      heldTokens.delete(token)
      throw err
    }
  }

  private hold (handle: fs.FileHandle, token: string): LockHold {
    let touching: Promise<void> = Promise.resolve()
    const heartbeat = setInterval(() => {
      touching = touching.then(async () => { const now = new Date(); await handle.utimes(now, now) }).catch(() => {})
    }, Math.max(5, Math.floor(this.staleMs / 4)))
    heartbeat.unref()
    const file = this.file
    return {
      async release (): Promise<boolean> {
        clearInterval(heartbeat)
        let ours = false
        try {
          await touching
          const [current, own] = await Promise.all([
            fs.stat(file).catch((err: unknown) => { if (code(err) === 'ENOENT') return null; throw err }),
            handle.stat(),
          ])
          ours = current?.ino === own.ino
          // unlink alone: rm would lstat first, one more thread-pool round trip on every store write.
          if (ours) await fs.unlink(file)
        } finally {
          await handle.close()
          heldTokens.delete(token)
        }
        return ours
      },
    }
  }

  /**
   * Breaks `file` when its holder is gone. Resolves with what holds it otherwise, or null when it may be free now
   * (gone, or just broken): then try to take it again at once.
   */
  private async breakIfStale (file: string, token: string): Promise<Snapshot | null> {
    const seen = await readLock(file)
    if (seen === null) return null
    if (!(await this.isStale(seen))) return seen
    const claimFile = `${file}.${instanceId(seen)}.break`
    const claim = await createExclusive(claimFile, `${this.ownerPrefix}${token}\n`)
    if (claim === null) {
      // Another process is breaking it, or crashed doing so: its claim is a lock like any other.
      await this.breakIfStale(claimFile, token)
      return seen
    }
    try {
      await claim.close()
      const now = await readLock(file)
      if (now === null || !sameInstance(now, seen)) return now
      const moved = `${file}.${instanceId(seen)}.stale`
      await fs.rename(file, moved)
      const check = await readLock(moved)
      if (check !== null && sameInstance(check, seen)) {
        await fs.unlink(moved)
        return null
      }
      // Its holder released it between our check and the rename, and a new holder took it: put that one back.
      // (Should a third process take the free name in this instant, link fails; nothing better is left to do.)
      await fs.link(moved, file).catch(() => {})
      await fs.unlink(moved)
      return check
    } finally {
      await fs.unlink(claimFile).catch(() => {})
    }
  }

  private async isStale (s: Snapshot): Promise<boolean> {
    if (s.owner !== null && s.owner.host === this.host) return !(await holderRuns(s.owner))
    return Date.now() - s.mtimeMs > this.staleMs
  }
}
