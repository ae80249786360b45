// Who published each retained message, and clearing a compromised identity's retained messages.
import type { PublishPacket } from 'aedes'

/**
 * The publisher's serial rides in the stored packet as an MQTT 5 user property: aedes-packet copies `properties`
 * (and `clientId`) into every packet it stores, through any persistence, and drops anything else. Aedes writes
 * properties only to MQTT 5 clients, which this plugin refuses, so the tag never reaches a subscriber; and a 3.1.1
 * publisher cannot send properties, so it cannot forge one (the tag is overwritten anyway).
 */
export const PUBLISHER_SERIAL = 'zt-serial'

type Properties = { userProperties?: Record<string, string | string[]>, [k: string]: unknown }
type Tagged = { properties?: Properties, clientId?: string }

/** Marks a retained publish (or will) with its publisher's serial and client id, before Aedes stores it. */
export function tagPublisher (packet: PublishPacket, serial: string, clientId: string | null): void {
  const p = packet as PublishPacket & Tagged
  p.properties = { ...p.properties, userProperties: { ...p.properties?.userProperties, [PUBLISHER_SERIAL]: serial } }
  if (clientId !== null) p.clientId = clientId
}

/** The serial a stored packet was tagged with, else null. */
export function publisherSerial (packet: unknown): string | null {
  const v = (packet as Tagged | null)?.properties?.userProperties?.[PUBLISHER_SERIAL]
  return typeof v === 'string' ? v : null
}

/** What clearing needs of an Aedes persistence (the in-memory one and aedes-persistence-redis both fit). */
export interface RetainedStore {
  createRetainedStream (pattern: string): AsyncIterable<unknown>
  storeRetained (packet: { cmd: 'publish', topic: string, payload: Buffer, qos: 0, retain: true, dup: false }): Promise<void> | void
}

/**
 * One pass over every retained message: deletes each one whose publisher serial `pick` answers for (not null), and
 * returns, per picked serial, what `pick` answered and how many messages went; `pick` is asked once per serial. Each
 * topic is read again just before its delete, so a message someone else retained there since the scan survives (the
 * read and the delete are two steps: a message retained between them is lost, a window of one round trip). The delete is an empty retained payload written to the persistence directly:
 * subscribers see nothing, and new ones get nothing. Deleting twice is harmless.
 */
async function clearRetainedWhere<T> (persistence: RetainedStore, pick: (serial: string) => T | null | Promise<T | null>): Promise<Map<string, { picked: T, messages: number }>> {
  const found: Array<{ topic: string, serial: string }> = []
  const out = new Map<string, { picked: T, messages: number }>()
  const passed = new Set<string>()
  for await (const packet of persistence.createRetainedStream('#')) {
    const topic = (packet as { topic?: unknown }).topic
    const serial = publisherSerial(packet)
    if (typeof topic !== 'string' || serial === null || passed.has(serial)) continue
    if (!out.has(serial)) {
      const picked = await pick(serial)
      if (picked === null) { passed.add(serial); continue }
      out.set(serial, { picked, messages: 0 })
    }
    found.push({ topic, serial })
  }
  for (const { topic, serial } of found) {
    let still = false
    for await (const packet of persistence.createRetainedStream(topic)) {
      if ((packet as { topic?: unknown }).topic === topic && publisherSerial(packet) === serial) still = true
    }
    if (!still) continue
    await persistence.storeRetained({ cmd: 'publish', topic, payload: Buffer.alloc(0), qos: 0, retain: true, dup: false })
    const entry = out.get(serial)
    if (entry !== undefined) entry.messages++
  }
  return out
}

/** A serial revoked for keyCompromise, with what audit lines say about it. */
export interface Compromised {
  serial: string
  id: string
  reason: string
}

export interface RetainedCleanerOptions {
  /** The Aedes persistence; undefined until Aedes has one (the cleaner then retries). */
  persistence: () => RetainedStore | undefined
  /**
   * For a sweep: whether a serial found on a retained message was revoked for keyCompromise. Asked at most once per
   * serial per pass, and only for serials some retained message carries.
   */
  compromised: (serial: string) => Compromised | null | Promise<Compromised | null>
  /** A serial's retained messages were cleared (`messages` may be 0 for one asked for by clear()). */
  onCleared: (rev: Compromised, messages: number, trigger: 'revocation' | 'sweep') => void
  /** A sweep finished: every retained message was checked. */
  onSwept: (messages: number, serials: number) => void
  /** A pass failed; what it was asked for is kept and retried. */
  onFailed: (err: unknown, serials: readonly string[]) => void
  /** First retry delay after a failed pass; doubles up to 30 s. @default 1000 */
  retryMs?: number
}

const MAX_RETRY_MS = 30_000

/**
 * Clears what compromised keys retained, one pass over the retained messages at a time: serials revoked while a pass
 * runs share the next pass (a burst, or a node catching up on many revocations, costs one scan, not one per serial),
 * and a sweep checks every retained message's tag at once (for revocations made while this node was not running).
 * A failed pass (the persistence or the store away) keeps its work and is retried, so clearing does not depend on a
 * live event arriving at a good moment, nor on the device being online.
 */
export class RetainedCleaner {
  readonly #o: RetainedCleanerOptions
  readonly #retryMs: number
  #asked = new Map<string, Compromised>()
  #sweep = false
  #running = false
  #failures = 0
  #retry: NodeJS.Timeout | undefined
  #closed = false

  constructor (options: RetainedCleanerOptions) {
    this.#o = options
    this.#retryMs = options.retryMs ?? 1_000
  }

  /** Clears what `rev.serial` retained. */
  clear (rev: Compromised): void {
    this.#asked.set(rev.serial, rev)
    this.#kick()
  }

  /** Clears the retained messages of every serial `compromised` picks, in one pass. */
  sweep (): void {
    this.#sweep = true
    this.#kick()
  }

  close (): void {
    this.#closed = true
    clearTimeout(this.#retry)
  }

  #kick (): void {
    if (this.#closed || this.#running || this.#retry !== undefined) return
    if (this.#asked.size === 0 && !this.#sweep) return
    this.#running = true
    void this.#pass().finally(() => {
      this.#running = false
      this.#kick()
    })
  }

  async #pass (): Promise<void> {
    const asked = this.#asked
    const sweep = this.#sweep
    this.#asked = new Map()
    this.#sweep = false
    try {
      const persistence = this.#o.persistence()
      if (persistence === undefined) throw new Error('retained: Aedes has no persistence yet')
      const pick = (serial: string): Compromised | null | Promise<Compromised | null> =>
        asked.get(serial) ?? (sweep ? this.#o.compromised(serial) : null)
      const cleared = await clearRetainedWhere(persistence, pick)
      this.#failures = 0
      if (this.#closed) return
      for (const rev of asked.values()) this.#o.onCleared(rev, cleared.get(rev.serial)?.messages ?? 0, 'revocation')
      let messages = 0
      for (const [serial, { picked, messages: n }] of cleared) {
        messages += n
        if (!asked.has(serial)) this.#o.onCleared(picked, n, 'sweep')
      }
      if (sweep) this.#o.onSwept(messages, cleared.size)
    } catch (err) {
      for (const [serial, rev] of asked) if (!this.#asked.has(serial)) this.#asked.set(serial, rev)
      this.#sweep ||= sweep
      if (this.#closed) return
      this.#o.onFailed(err, [...asked.keys()])
      const delay = Math.min(this.#retryMs * 2 ** this.#failures, MAX_RETRY_MS)
      this.#failures++
      this.#retry = setTimeout(() => { this.#retry = undefined; this.#kick() }, delay)
      this.#retry.unref()
    }
  }
}
