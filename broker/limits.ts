// Limits applied before and after authentication (PRODUCT.md "Limits before authentication"), with their defaults.

export interface BrokerLimits {
  /** TLS handshake must finish within this. @default 10000 */
  handshakeTimeoutMs: number
  /** CONNECT must arrive within this of the handshake. @default 10000 */
  connectTimeoutMs: number
  /** Bytes a client may send before it is authenticated (its CONNECT and anything pipelined with it). @default 65536 */
  firstPacketBytes: number
  /** Largest packet after CONNECT. @default 262144 */
  maxPacketBytes: number
  /** Longest topic name or filter, in UTF-8 bytes. @default 1024 */
  maxTopicBytes: number
  /** Most topic levels (Aedes cannot go above 100). @default 32 */
  maxTopicLevels: number
}

export const DEFAULT_LIMITS: Readonly<BrokerLimits> = Object.freeze({
  handshakeTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  firstPacketBytes: 65_536,
  maxPacketBytes: 262_144,
  maxTopicBytes: 1_024,
  maxTopicLevels: 32,
})
