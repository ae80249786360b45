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
 * Deletes every retained message the serial published. Each topic is read again just before its delete, so a
 * message that someone else retained there since the scan survives (the read and the delete are two steps: a
 * message retained between them is lost, a window of one round trip). The delete is an empty retained payload
 * written to the persistence directly: subscribers see nothing, and new ones get nothing. Returns how many went.
 */
export async function clearRetainedOf (persistence: RetainedStore, serial: string): Promise<number> {
  const topics: string[] = []
  for await (const packet of persistence.createRetainedStream('#')) {
    const topic = (packet as { topic?: unknown }).topic
    if (typeof topic === 'string' && publisherSerial(packet) === serial) topics.push(topic)
  }
  let cleared = 0
  for (const topic of topics) {
    let still = false
    for await (const packet of persistence.createRetainedStream(topic)) {
      if ((packet as { topic?: unknown }).topic === topic && publisherSerial(packet) === serial) still = true
    }
    if (!still) continue
    await persistence.storeRetained({ cmd: 'publish', topic, payload: Buffer.alloc(0), qos: 0, retain: true, dup: false })
    cleared++
  }
  return cleared
}
