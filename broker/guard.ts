// Byte limits and string hygiene applied inside each connection's MQTT parser, before a packet is ever buffered whole.
import { isUtf8 } from 'node:buffer'

/** Why the guard closed a connection; these appear verbatim in `protocol.violation` audit lines. */
export type GuardViolation = 'first-packet-too-large' | 'packet-too-large' | 'invalid-utf8' | 'nul-in-string' | 'guard-unavailable'

export class GuardError extends Error {
  readonly violation: GuardViolation
  constructor (violation: GuardViolation, message: string) {
    super(message)
    this.violation = violation
  }
}

export interface GuardLimits {
  /** Bytes a connection may send before it is authenticated (the CONNECT and anything pipelined with it). */
  firstPacketBytes: number
  /** Largest declared packet length once authenticated. */
  maxPacketBytes: number
}

/** Per-connection switch the plugin flips once the certificate identity is accepted. */
export interface GuardState {
  authenticated: boolean
  bytesBeforeAuth: number
}

// The subset of mqtt-packet's Parser (9.x) the guard wraps. These are internals: installGuard checks they exist and
// fails closed when an upgrade renames them, and test/broker-hostile.test.ts exercises each one.
interface ParserInternals {
  parse (buf: Buffer): number
  _parseLength (): boolean
  _parseString (maybeBuffer?: boolean): string | null
  _emitError (err: Error): void
  _list: { slice (start: number, end: number): Buffer }
  _pos: number
  packet: { length: number, cmd?: string }
  error: Error | null
}

function isParser (p: unknown): p is ParserInternals {
  if (typeof p !== 'object' || p === null) return false
  const o = p as Record<string, unknown>
  return typeof o.parse === 'function' && typeof o._parseLength === 'function' && typeof o._parseString === 'function' &&
    typeof o._emitError === 'function' && typeof o._list === 'object'
}

/**
 * Installs the limits on an Aedes client's parser. Returns false (and the caller must drop the connection) when the
 * parser does not look like the mqtt-packet version this was written for: no guard means no connection.
 */
export function installGuard (parser: unknown, limits: GuardLimits, state: GuardState, onViolation: (err: GuardError) => void): boolean {
  if (!isParser(parser)) return false
  const fail = (p: ParserInternals, err: GuardError): void => {
    if (p.error !== null) return
    onViolation(err)
    p._emitError(err)
  }

  // A string refused below makes the parser's caller report a second, vaguer error: keep the first.
  const emitError = parser._emitError
  parser._emitError = function firstError (this: ParserInternals, err: Error): void {
    if (this.error !== null) return
    emitError.call(this, err)
  }

  const parse = parser.parse
  parser.parse = function guardedParse (this: ParserInternals, buf: Buffer): number {
    if (!state.authenticated) {
      // Counting before the parser sees the bytes bounds what an unauthenticated peer can make us hold.
      state.bytesBeforeAuth += buf.length
      if (state.bytesBeforeAuth > limits.firstPacketBytes) {
        fail(this, new GuardError('first-packet-too-large', `more than ${limits.firstPacketBytes} bytes before authentication`))
        return 0
      }
    }
    return parse.call(this, buf)
  }

  const parseLength = parser._parseLength
  parser._parseLength = function guardedLength (this: ParserInternals): boolean {
    const done = parseLength.call(this)
    if (!done) return done
    const limit = state.authenticated ? limits.maxPacketBytes : limits.firstPacketBytes
    if (this.packet.length > limit) {
      const violation = state.authenticated ? 'packet-too-large' : 'first-packet-too-large'
      fail(this, new GuardError(violation, `${this.packet.cmd ?? 'packet'} declares ${this.packet.length} bytes (limit ${limit})`))
      return false
    }
    return done
  }

  const parseString = parser._parseString
  parser._parseString = function guardedString (this: ParserInternals, maybeBuffer?: boolean): string | null {
    const start = this._pos
    const value = parseString.call(this, maybeBuffer)
    if (value === null) return value
    // The parser decodes ill-formed UTF-8 [MQTT-1.5.3-1] (overlong forms and surrogates included) to U+FFFD, so a string
    // without one was well-formed; only one with it needs its raw bytes checked, as U+FFFD can also be sent as such.
    if (value.includes('\uFFFD') && !isUtf8(this._list.slice(start + 2, this._pos))) {
      fail(this, new GuardError('invalid-utf8', `${this.packet.cmd ?? 'packet'} carries a string that is not valid UTF-8`))
      return null
    }
    if (value.includes('\u0000')) {
      fail(this, new GuardError('nul-in-string', `${this.packet.cmd ?? 'packet'} carries a string with U+0000`))
      return null
    }
    return value
  }
  return true
}
