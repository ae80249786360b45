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

/**
 * Per-connection switch the plugin flips once the certificate identity is accepted, with what the guard needs to act
 * on its own: the limits and whom to tell. Kept on the parser under a symbol, so the wrapped methods below are shared
 * by every connection instead of being closures made for each one.
 */
export interface GuardState {
  authenticated: boolean
  bytesBeforeAuth: number
  readonly limits: GuardLimits
  /** Told before the parser emits the error; `state` is this object. */
  readonly onViolation: (err: GuardError, state: GuardState) => void
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

const STATE: unique symbol = Symbol('aedes-zero-trust.guard')

type Guarded = ParserInternals & { [STATE]: GuardState }

/** The four methods the guard wraps, as one parser has them. */
interface Methods {
  parse: ParserInternals['parse']
  _parseLength: ParserInternals['_parseLength']
  _parseString: ParserInternals['_parseString']
  _emitError: ParserInternals['_emitError']
}

function fail (p: Guarded, err: GuardError): void {
  if (p.error !== null) return
  const state = p[STATE]
  state.onViolation(err, state)
  p._emitError(err)
}

/** Wrappers around `original`; they find the connection's state on the parser they are called on. */
function wrap (original: Methods): Methods {
  const { parse, _parseLength: parseLength, _parseString: parseString, _emitError: emitError } = original
  return {
    // A string refused below makes the parser's caller report a second, vaguer error: keep the first.
    _emitError: function firstError (this: ParserInternals, err: Error): void {
      if (this.error !== null) return
      emitError.call(this, err)
    },

    parse: function guardedParse (this: ParserInternals, buf: Buffer): number {
      const state = (this as Guarded)[STATE]
      if (!state.authenticated) {
        // Counting before the parser sees the bytes bounds what an unauthenticated peer can make us hold.
        state.bytesBeforeAuth += buf.length
        if (state.bytesBeforeAuth > state.limits.firstPacketBytes) {
          fail(this as Guarded, new GuardError('first-packet-too-large', `more than ${state.limits.firstPacketBytes} bytes before authentication`))
          return 0
        }
      }
      return parse.call(this, buf)
    },

    _parseLength: function guardedLength (this: ParserInternals): boolean {
      const done = parseLength.call(this)
      if (!done) return done
      const state = (this as Guarded)[STATE]
      const limit = state.authenticated ? state.limits.maxPacketBytes : state.limits.firstPacketBytes
      if (this.packet.length > limit) {
        const violation = state.authenticated ? 'packet-too-large' : 'first-packet-too-large'
        fail(this as Guarded, new GuardError(violation, `${this.packet.cmd ?? 'packet'} declares ${this.packet.length} bytes (limit ${limit})`))
        return false
      }
      return done
    },

    _parseString: function guardedString (this: ParserInternals, maybeBuffer?: boolean): string | null {
      const start = this._pos
      const value = parseString.call(this, maybeBuffer)
      if (value === null) return value
      // The parser decodes ill-formed UTF-8 [MQTT-1.5.3-1] (overlong forms and surrogates included) to U+FFFD, so a string
      // without one was well-formed; only one with it needs its raw bytes checked, as U+FFFD can also be sent as such.
      if (value.includes('\uFFFD') && !isUtf8(this._list.slice(start + 2, this._pos))) {
        fail(this as Guarded, new GuardError('invalid-utf8', `${this.packet.cmd ?? 'packet'} carries a string that is not valid UTF-8`))
        return null
      }
      if (value.includes('\u0000')) {
        fail(this as Guarded, new GuardError('nul-in-string', `${this.packet.cmd ?? 'packet'} carries a string with U+0000`))
        return null
      }
      return value
    },
  }
}

/** Wrappers per parser prototype: every parser that still has its class's methods shares one set. */
const SHARED = new WeakMap<object, Methods>()

function wrappersFor (parser: ParserInternals): Methods {
  const proto = Object.getPrototypeOf(parser) as Partial<Methods> | null
  const own = proto === null || parser.parse !== proto.parse || parser._parseLength !== proto._parseLength ||
    parser._parseString !== proto._parseString || parser._emitError !== proto._emitError
  // A parser whose methods were replaced on the instance gets wrappers around exactly those.
  if (own) return wrap(parser)
  let w = SHARED.get(proto)
  if (w === undefined) SHARED.set(proto, w = wrap(parser))
  return w
}

/**
 * Installs the limits on an Aedes client's parser. Returns false (and the caller must drop the connection) when the
 * parser does not look like the mqtt-packet version this was written for: no guard means no connection.
 */
export function installGuard (parser: unknown, state: GuardState): boolean {
  if (!isParser(parser)) return false
  const w = wrappersFor(parser)
  ;(parser as Guarded)[STATE] = state
  parser._emitError = w._emitError
  parser.parse = w.parse
  parser._parseLength = w._parseLength
  parser._parseString = w._parseString
  return true
}
