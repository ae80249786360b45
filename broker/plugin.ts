// `zeroTrust(aedes, options)`: turns the Aedes hooks into thin adapters over the decisions in broker/decide.ts.
import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import tls from 'node:tls'
import type { Aedes, Client, AuthenticateError, PublishPacket, Subscription, AedesPublishPacket, ConnectPacket } from 'aedes'
import pino, { type Logger } from 'pino'
import { oneLine, ZtError } from '../common/errors.js'
import { compileFor, type PolicySource } from '../policies/index.js'
import type { CertStore } from '../store/types.js'
import { denyAllAuthorizer, ownTopicsAuthorizer, type Authorizer, type AuthorizerFactory, type Decision, type Qos } from './authorizer.js'
import { bindClientId, CONNACK, decideConnect, type ConnectRefusal, type RevocationView } from './decide.js'
import { GuardError, installGuard, type GuardState } from './guard.js'
import { IdentityReader, trustAnchor, type Identity } from './identity.js'
import { DEFAULT_LIMITS, type BrokerLimits } from './limits.js'
import type { MetricsRecorder } from './metrics.js'
import { hardenTlsSocket, peerCertificateDer, tlsServerOptions, type TrustMaterial } from './tls.js'
import { publisherSerial, RetainedCleaner, tagPublisher, type RetainedStore } from './retained.js'
import { checkTopicFilter, checkTopicName } from './topics.js'

export interface ZeroTrustOptions {
  /**
   * The CA the broker trusts and the TLS identity it serves (a `loadHome()` result fits). Without it the plugin
   * admits nobody: every CONNECT gets "server unavailable".
   */
  ca?: TrustMaterial | undefined
  /** Certificate inventory, for `identity.requireIssuedSerial` and for wills published by another node. */
  store?: CertStore | undefined
  /** The revoked set (a started RevocationMirror). Without one, nobody is admitted: revocation cannot be checked. */
  revocation?: RevocationView | undefined
  /** Topic policies (a PolicySet, or the watcher from `watchPolicies` so reloads apply to live connections). */
  policies?: PolicySource | undefined
  /**
   * Compiles the per-connection authorizer; overrides `policies`. Default without either: the narrow built-in
   * rule, each identity only under `devices/<id>/#`, nothing under `$SYS`.
   */
  authorizer?: AuthorizerFactory | undefined
  identity?: {
    /** Admit only serials the CA's inventory holds. @default true */
    requireIssuedSerial?: boolean
    /** Also accept client ids `<id>:<suffix>` (suffix in the id alphabet). @default false */
    clientIdSuffix?: boolean
  }
  limits?: Partial<BrokerLimits>
  /** Audit lines go here (pino). @default a silent logger */
  logger?: Logger
  /** Told about every audit line and every closed connection (broker/metrics.ts BrokerMetrics fits). @default none */
  metrics?: MetricsRecorder | undefined
}

/** What the plugin knows about one accepted connection. */
export interface ConnectionInfo {
  identity: Identity
  clientId: string
  remote: string
  connectedAt: Date
}

export interface ZeroTrust {
  /** TLS server options (mutual TLS, our CA only); undefined when no CA is configured. */
  readonly tlsOptions: tls.TlsOptions | undefined
  /** A TLS server whose connections go to `aedes.handle`; throws ZT_BAD_CONFIG when no CA is configured. */
  createServer (): tls.Server
  /** The identity behind a connected Aedes client. */
  connection (client: Client): ConnectionInfo | undefined
  /** Live authenticated connections. */
  readonly connections: number
  /** Closes every live connection of a serial without publishing its will; returns how many. */
  cutOff (serial: string): number
  /** Stops following revocations. Hooks stay installed and keep refusing. */
  detach (): void
}

/**
 * Everything the plugin keeps for one connection, from aedes.handle on, in one object on the client (the guard finds
 * it on the parser too). Idle connections are the common case, so nothing here is made before it is needed.
 */
interface Conn extends GuardState {
  readonly remote: string
  /** The client id as sent in CONNECT, until it is bound to the certificate. */
  rawClientId: string
  /** Set when the connection is admitted, with clientId and authorizer: until then it is pending. */
  identity: Identity | undefined
  clientId: string
  authorizer: Authorizer | undefined
  /** Date.now() at admission; a Date is made only when someone asks (`connection()`). */
  connectedAtMs: number
  /** Receive denials already logged on this connection, so a busy topic cannot flood the audit log; made at the first. */
  loggedReceive: Set<string> | undefined
  /** The delivery whose receive decision deliverQoS took (`judged`), so authorizeForward does not take it again. */
  judging: object | undefined
  judged: Decision | undefined
}

/** An admitted connection. */
type ConnState = Conn & { identity: Identity, authorizer: Authorizer }

/** Marks an Aedes client hook error with a CONNACK code (Aedes reads `returnCode`). */
function connackError (code: number, message: string): AuthenticateError {
  const err = new Error(message) as AuthenticateError
  ;(err as { returnCode: number }).returnCode = code
  return err
}

/** The serial of the connection that stored a Last Will travels with it, so any node can judge the will later. */
const WILL_SERIAL = 'ztSerial'

type WillPacket = PublishPacket & { clientId?: string, brokerId?: string, [WILL_SERIAL]?: string }

/** `addr:port` of a socket, IPv6 in brackets, for audit lines. */
export function remoteOf (conn: unknown): string {
  const s = conn as { remoteAddress?: string, remotePort?: number }
  if (typeof s.remoteAddress !== 'string') return 'unknown'
  return s.remoteAddress.includes(':') ? `[${s.remoteAddress}]:${s.remotePort ?? 0}` : `${s.remoteAddress}:${s.remotePort ?? 0}`
}

function isTlsSocket (conn: unknown): conn is TLSSocket {
  return typeof (conn as { getPeerCertificate?: unknown }).getPeerCertificate === 'function'
}

/** Marks sockets accepted by `createServer` (our TLS options: only our CA certificates are trusted). */
const OUR_TLS: unique symbol = Symbol('aedes-zero-trust.our-tls')

const MAX_LOGGED_RECEIVE = 64

type MessageOptions = { readonly qos: Qos, readonly retain: boolean }

/** One frozen options object per (QoS, retain): asking about a message must not allocate, it runs per message. */
const MESSAGE_OPTIONS: readonly MessageOptions[] = ([0, 1, 2] as const).flatMap((qos) => [false, true].map((retain) => Object.freeze({ qos, retain })))

function messageOptions (qos: number | undefined, retain: boolean | undefined): MessageOptions {
  const q = qos ?? 0
  const o = MESSAGE_OPTIONS[q * 2 + (retain === true ? 1 : 0)]
  return o !== undefined && o.qos === q ? o : { qos: q as Qos, retain: retain === true }
}

/** A packet as mqtt-packet's parser emits it; only a SUBSCRIBE's list is read. */
interface ParsedPacket {
  cmd: string
  subscriptions?: Array<{ topic: string, qos: number }>
}

type Deliver = (packet: AedesPublishPacket, callback: () => void) => void

/** What the plugin uses of an Aedes 1.x client beyond its typings (lib/client.js); checked, and failed closed on. */
interface ClientInternals {
  deliverQoS: Deliver
  deliver0: Deliver
  _nextId: number
  _parser: { _queue: ParsedPacket[] | null }
}

/** The session side of Aedes' persistence (aedes-persistence, aedes-persistence-redis): subscriptions and the outgoing queue. */
interface SessionStore {
  addSubscriptions?: (client: Client, subs: Subscription[]) => Promise<unknown>
  removeSubscriptions?: (client: Client, topics: string[]) => Promise<unknown>
  outgoingUpdate?: (client: Client, packet: object) => Promise<unknown>
  outgoingClearMessageId?: (client: Client, packet: object) => Promise<unknown>
  createRetainedStreamCombi?: (patterns: string[]) => AsyncIterable<unknown>
}

function noop (): void {}

/**
 * Marks a publish refused by policy: Aedes would close the connection on a hook error, so it is acked, then dropped
 * by the aedes.publish wrapper. A property, unlike a WeakSet, costs the wrapper nothing on every allowed message.
 */
const DROPPED: unique symbol = Symbol('aedes-zero-trust.dropped')
type Droppable = { [DROPPED]?: boolean }

/**
 * Installs zero-trust admission and authorization on an Aedes 1.x instance. Hooks installed before are replaced
 * (preConnect and published are chained after ours). The returned object creates the TLS server.
 */
export function zeroTrust (aedes: Aedes, options: ZeroTrustOptions = {}): ZeroTrust {
  const limits: BrokerLimits = Object.freeze({ ...DEFAULT_LIMITS, ...(options.limits ?? {}) })
  const log = options.logger ?? pino({ level: 'silent' })
  const requireIssued = options.identity?.requireIssuedSerial ?? true
  const allowSuffix = options.identity?.clientIdSuffix ?? false
  const store = options.store
  const revocation = options.revocation
  const ca = options.ca
  const reader = ca === undefined ? undefined : new IdentityReader(trustAnchor(ca.issuingPem, ca.trustDomain))
  const policies = options.policies
  const fromPolicies: AuthorizerFactory | undefined = policies === undefined
    ? undefined
    : (identity) => compileFor(policies, { id: identity.id, kind: identity.kind, groups: identity.groups, serial: identity.serial })
  const compile: AuthorizerFactory = ca === undefined ? denyAllAuthorizer : (options.authorizer ?? fromPolicies ?? ownTopicsAuthorizer)
  // createServer vouches that only our CA certificates are trusted (see OUR_TLS), so it keeps its own options; callers
  // get a copy they may change for servers of their own.
  const serverOptions = ca === undefined ? undefined : tlsServerOptions(ca, limits)
  const tlsOptions = serverOptions === undefined ? undefined : { ...serverOptions, ca: Array.isArray(serverOptions.ca) ? [...serverOptions.ca] : serverOptions.ca }

  // On the client under a symbol of this instance: a property load, where a WeakMap lookup would cost more twice per message.
  const STATE: unique symbol = Symbol('aedes-zero-trust.state')
  /** The connection's record from aedes.handle on, admitted or not. */
  const connOf = (client: Client): Conn | undefined => (client as unknown as { [STATE]?: Conn })[STATE]
  const states = {
    /** The connection's record once admitted; undefined before (and for clients not set up through aedes.handle). */
    get: (client: Client): ConnState | undefined => {
      const c = (client as unknown as { [STATE]?: Conn })[STATE]
      return c === undefined || c.identity === undefined ? undefined : c as ConnState
    },
  }
  /** Live admitted clients by certificate serial: the client itself while it is the only one, a Set beyond. */
  const bySerial = new Map<string, Client | Set<Client>>()
  /** Clients refused at CONNECT: their closing error is already in the audit log as connect.refused. */
  const refused = new WeakSet<Client>()
  const topicLimits = { maxTopicBytes: limits.maxTopicBytes, maxTopicLevels: limits.maxTopicLevels }

  const broker = aedes as Aedes & {
    connectTimeout: number
    maxClientsIdLength: number
    maxTopicLevels: number
    persistence: RetainedStore & { delWill (client: { id: string, brokerId: string }): Promise<unknown> }
  }
  broker.connectTimeout = limits.connectTimeoutMs
  // Aedes only lets 3.1 clients use long ids, but 3.1 devices must still fit an id (64) plus ':' and a suffix (64).
  broker.maxClientsIdLength = allowSuffix ? 129 : 64
  // Aedes clamps to 100 (its router's ceiling); ours is usually far below.
  broker.maxTopicLevels = Math.min(Math.max(limits.maxTopicLevels, 1), 100)

  /** Aedes' session store, read when needed: Aedes has one only once it listens, and a library user may attach before. */
  const sessionStore = (): SessionStore | undefined => broker.persistence as unknown as SessionStore | undefined

  const metrics = options.metrics
  const audit = (level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void => {
    log[level]({ event, id: null, serial: null, ...fields }, event)
    metrics?.record(event, fields)
  }

  // ---- connection setup: limits inside the parser, before the first byte is parsed --------------------------------
  // Shared by every connection (the guard passes the connection's record), so none needs closures of its own.
  const onViolation = (err: GuardError, state: GuardState): void => {
    const c = state as Conn
    audit('warn', 'protocol.violation', { id: c.identity?.id ?? null, serial: c.identity?.serial ?? null, reason: err.violation, detail: err.message, remote: c.remote })
  }
  /** 'close' listener of a socket whose Aedes client is `socket.client` (Aedes sets it): one function for all. */
  function forgetSocket (this: { client?: Client }): void {
    if (this.client !== undefined) forget(this.client)
  }

  const originalHandle = aedes.handle
  aedes.handle = function handle (conn, req) {
    const client = originalHandle(conn, req)
    const c: Conn = {
      authenticated: false,
      bytesBeforeAuth: 0,
      limits,
      onViolation,
      remote: remoteOf(conn),
      rawClientId: '',
      identity: undefined,
      clientId: '',
      authorizer: undefined,
      connectedAtMs: 0,
      loggedReceive: undefined,
      judging: undefined,
      judged: undefined,
    }
    const parser = (client as unknown as { _parser: unknown })._parser
    if (!installGuard(parser, c) || !grantOnParse(parser)) {
      audit('warn', 'connect.refused', { reason: 'guard-unavailable', detail: 'the MQTT parser does not expose the hooks the byte limits and QoS grants need', remote: c.remote })
      conn.destroy()
      return client
    }
    ;(client as unknown as { [STATE]?: Conn })[STATE] = c
    if (isTlsSocket(conn)) hardenTlsSocket(conn)
    if ((conn as { client?: unknown }).client === client) conn.on('close', forgetSocket)
    else conn.once('close', () => { forget(client) })
    return client
  }

  function track (serial: string, client: Client): void {
    const cur = bySerial.get(serial)
    if (cur === undefined) bySerial.set(serial, client)
    else if (cur instanceof Set) cur.add(client)
    else if (cur !== client) bySerial.set(serial, new Set([cur, client]))
  }

  function forget (client: Client): void {
    const st = states.get(client)
    if (st === undefined) return
    metrics?.connectionClosed(st.identity.kind)
    const serial = st.identity.serial
    const cur = bySerial.get(serial)
    if (cur === client) {
      bySerial.delete(serial)
    } else if (cur instanceof Set) {
      cur.delete(client)
      if (cur.size === 0) bySerial.delete(serial)
    }
  }

  // ---- CONNECT ------------------------------------------------------------------------------------------------------
  const previousPreConnect = aedes.preConnect
  aedes.preConnect = function preConnect (client, packet: ConnectPacket, callback) {
    const p = connOf(client)
    if (p !== undefined) p.rawClientId = typeof packet.clientId === 'string' ? packet.clientId : ''
    if (packet.protocolVersion !== 3 && packet.protocolVersion !== 4) {
      // Aedes answers CONNACK 1 itself; the audit line is ours.
      refused.add(client)
      audit('warn', 'connect.refused', { reason: 'mqtt-version', detail: `MQTT protocol level ${String(packet.protocolVersion)}`, remote: remoteOf(client.conn), code: CONNACK.unacceptableProtocol })
    }
    previousPreConnect.call(aedes, client, packet, callback)
  }

  aedes.authenticate = function authenticate (client, _username, _password, callback) {
    // Username and password are ignored by design: the certificate is the only credential.
    const remote = remoteOf(client.conn)
    const p = connOf(client)
    let answered = false
    const refuse = (r: ConnectRefusal, identity?: Identity): void => {
      answered = true
      refused.add(client)
      audit('warn', 'connect.refused', { id: identity?.id ?? null, serial: identity?.serial ?? null, reason: r.reason, detail: r.detail, code: r.code, remote, clientId: p?.rawClientId ?? null })
      // Aedes cleans the inbound QoS 2 store of `client.id` when a clean client closes: never let that be a real id.
      ;(client as { id: string }).id = `$refused/${randomUUID()}`
      ;(client as unknown as { _will: unknown })._will = null
      callback(connackError(r.code, r.detail), false)
    }
    if (p === undefined) {
      refuse({ code: CONNACK.serverUnavailable, reason: 'guard-unavailable', detail: 'connection was not set up through aedes.handle' })
      return
    }
    const conn = client.conn
    const der = isTlsSocket(conn) ? peerCertificateDer(conn) : undefined
    decideConnect({
      configured: reader !== undefined,
      tls: isTlsSocket(conn),
      tlsAuthorized: isTlsSocket(conn) && conn.authorized,
      chainVerifiedByOurTls: (conn as { [OUR_TLS]?: boolean })[OUR_TLS] === true,
      certificate: der,
      reader,
      revocation,
      store: requireIssued ? store : undefined,
      requireIssuedSerial: requireIssued,
    }).then((decision) => {
      if (client.closed) return
      if (!decision.ok) { refuse(decision, decision.identity); return }
      const identity = decision.identity
      const bound = bindClientId(p.rawClientId, client.clean, identity.id, allowSuffix)
      if (!bound.ok) { refuse(bound, identity); return }
      const authorizer = compile(identity)
      const will = (client as unknown as { _will: WillPacket | null })._will
      if (will !== null && will !== undefined) {
        const bad = checkTopicName(will.topic, topicLimits)
        if (bad !== null) { refuse({ code: CONNACK.notAuthorized, reason: 'will-topic-invalid', detail: `will topic: ${bad}` }, identity); return }
        const d = authorizer.publish(will.topic, { qos: (will.qos ?? 0) as Qos, retain: will.retain === true })
        if (d.effect !== 'allow') {
          refuse({ code: CONNACK.notAuthorized, reason: 'will-forbidden', detail: `will topic ${JSON.stringify(will.topic)} is not allowed (${d.reason}${d.statement === undefined ? '' : `, ${d.statement}`})` }, identity)
          return
        }
        will[WILL_SERIAL] = identity.serial
      }
      ;(client as { id: string }).id = bound.clientId
      p.clientId = bound.clientId
      p.authorizer = authorizer
      p.connectedAtMs = Date.now()
      p.identity = identity // admitted from here on: states.get(client) answers
      guardSessions()
      if (!capDeliveries(client, p as ConnState)) {
        p.identity = undefined
        refuse({ code: CONNACK.serverUnavailable, reason: 'guard-unavailable', detail: 'the Aedes client does not expose the delivery functions the QoS caps need' }, identity)
        return
      }
      // SUBSCRIBEs pipelined with the CONNECT were parsed before there was an identity to grant them a QoS.
      for (const queued of (client as unknown as ClientInternals)._parser._queue ?? []) grantRequestedQos(client, queued)
      track(identity.serial, client)
      p.authenticated = true
      audit('info', 'connect.accepted', { id: identity.id, serial: identity.serial, kind: identity.kind, groups: identity.groups, clientId: bound.clientId, clean: client.clean, remote, reason: 'certificate' })
      answered = true
      callback(null, true)
    }).catch((err: unknown) => {
      // Fail closed on anything unexpected (a policy that cannot compile for this identity, a store bug).
      if (!client.closed && !answered) refuse({ code: CONNACK.serverUnavailable, reason: 'internal-error', detail: oneLine(err) })
    })
  }

  // A revocation can land between the checks above and Aedes registering the client: look once more.
  const onClient = (client: Client): void => {
    const st = states.get(client)
    if (st === undefined) { client.close(); return }
    if (revocation?.isRevoked(st.identity.serial) === true) cutOffClient(client)
  }
  aedes.on('client', onClient)

  const onClientError = (client: Client, err: Error): void => {
    if (err instanceof GuardError || refused.has(client)) return // already audited with its reason
    const st = states.get(client)
    audit('warn', 'connection.closed', { id: st?.identity.id ?? null, serial: st?.identity.serial ?? null, reason: 'protocol-error', detail: err.message, remote: remoteOf(client.conn) })
  }
  aedes.on('clientError', onClientError)
  aedes.on('connectionError', onClientError)

  // ---- PUBLISH (client publishes and Last Wills, from this node or, with client null, orphaned by a dead node) -----
  const drop = (packet: object, callback: (err?: Error | null) => void): void => {
    (packet as Droppable)[DROPPED] = true
    callback(null)
  }

  aedes.authorizePublish = function authorizePublish (client, packet, callback) {
    const will = packet as WillPacket
    if (client === null) { judgeOrphanWill(will, callback); return }
    const st = states.get(client)
    if (st === undefined) { drop(packet, callback); return }
    if (typeof will[WILL_SERIAL] === 'string' && will[WILL_SERIAL] !== st.identity.serial) {
      // A will stored by another session (of a node that died) while this id reconnected here: judge its owner.
      judgeOrphanWill(will, callback)
      return
    }
    const bad = checkTopicName(packet.topic, topicLimits)
    if (bad !== null) {
      audit('warn', 'protocol.violation', { id: st.identity.id, serial: st.identity.serial, reason: bad, remote: st.remote })
      callback(new Error(`publish: topic refused (${bad})`))
      return
    }
    if (revocation === undefined || revocation.isRevoked(st.identity.serial)) {
      audit('warn', 'publish.denied', { id: st.identity.id, serial: st.identity.serial, topic: packet.topic, reason: 'revoked', remote: st.remote })
      drop(packet, callback)
      return
    }
    const d = st.authorizer.publish(packet.topic, messageOptions(packet.qos, packet.retain))
    if (d.effect !== 'allow') {
      audit('warn', 'publish.denied', { id: st.identity.id, serial: st.identity.serial, topic: packet.topic, qos: packet.qos, retain: packet.retain === true, reason: d.reason, statement: d.statement ?? null, remote: st.remote })
      drop(packet, callback)
      return
    }
    // Tagged so that a keyCompromise revocation can find what this certificate left retained.
    if (packet.retain === true) tagPublisher(packet, st.identity.serial, st.clientId)
    callback(null)
  }

  function judgeOrphanWill (will: WillPacket, callback: (err?: Error | null) => void): void {
    const owner = typeof will.clientId === 'string' ? will.clientId : null
    const serial = will[WILL_SERIAL]
    const deny = (reason: string, id: string | null = null): void => {
      audit('warn', 'will.denied', { id, serial: serial ?? null, clientId: owner, topic: will.topic, reason })
      drop(will, callback)
    }
    if (typeof serial !== 'string') { deny('will-owner-unknown'); return }
    if (revocation === undefined || !revocation.state().current) { deny('revocation-not-current'); return }
    if (revocation.isRevoked(serial)) { deny('revoked'); return }
    if (store === undefined) { deny('no-store'); return }
    store.getIssued(serial).then((record) => {
      if (record === null) { deny('unknown-serial'); return }
      if (owner === null || !(owner === record.id || owner.startsWith(`${record.id}:`))) { deny('will-owner-mismatch', record.id); return }
      if (revocation.isRevoked(serial)) { deny('revoked', record.id); return }
      if (checkTopicName(will.topic, topicLimits) !== null) { deny('will-topic-invalid', record.id); return }
      const d = compile({ id: record.id, kind: record.kind, groups: record.groups, serial }).publish(will.topic, { qos: (will.qos ?? 0) as Qos, retain: will.retain === true })
      if (d.effect !== 'allow') { deny(d.reason, record.id); return }
      if (will.retain === true) tagPublisher(will, serial, owner)
      callback(null)
    }, () => { deny('store-unavailable') }).catch(() => {
      // Anything thrown while judging (an authorizer that cannot compile for the record) refuses the will; an
      // unhandled rejection here would kill the process and leave Aedes' will sweep waiting forever.
      deny('internal-error')
    })
  }

  const originalPublish = aedes.publish
  aedes.publish = function publish (this: Aedes, packet: PublishPacket, client: unknown, done?: unknown) {
    const cb = (typeof client === 'function' ? client : done) as ((err?: Error) => void) | undefined
    if ((packet as Droppable)[DROPPED] === true) {
      (packet as Droppable)[DROPPED] = false
      if (cb !== undefined) setImmediate(cb)
      return
    }
    return (originalPublish as (...args: unknown[]) => void).call(this, packet, client, done)
  } as Aedes['publish']

  // ---- SUBSCRIBE (also runs when Aedes restores a persistent session's subscriptions) -------------------------------
  aedes.authorizeSubscribe = function authorizeSubscribe (client, sub: Subscription, callback) {
    const st = states.get(client)
    if (st === undefined) { callback(null, null); return }
    const bad = checkTopicFilter(sub.topic, topicLimits)
    if (bad !== null) {
      audit('warn', 'subscribe.denied', { id: st.identity.id, serial: st.identity.serial, filter: sub.topic, reason: bad, remote: st.remote })
      // A live SUBSCRIBE with a malformed filter is a protocol violation; a restored one (before CONNACK) is just
      // skipped, so a stored bad filter cannot lock a session out for good.
      if ((client as unknown as { connackSent: boolean }).connackSent) { callback(new Error(`subscribe: filter refused (${bad})`)); return }
      forgetRestored(client, st, sub.topic, bad)
      callback(null, null)
      return
    }
    if (revocation === undefined || revocation.isRevoked(st.identity.serial)) { callback(null, null); return }
    const d = st.authorizer.subscribe(sub.topic, { qos: (sub.qos ?? 0) as Qos })
    if (d.effect !== 'allow') {
      audit('warn', 'subscribe.denied', { id: st.identity.id, serial: st.identity.serial, filter: sub.topic, qos: sub.qos, reason: d.reason, statement: d.statement ?? null, remote: st.remote })
      if (!(client as unknown as { connackSent: boolean }).connackSent) forgetRestored(client, st, sub.topic, d.reason)
      callback(null, null)
      return
    }
    callback(null, atGrantedQos(sub, d.grantedQos))
  }

  /**
   * A restored subscription the policy now refuses leaves the session store: left there, the session would go on
   * queueing its messages while offline and offer it again at every reconnect. Allowed ones are not touched.
   */
  function forgetRestored (client: Client, st: ConnState, filter: string, refusal: string): void {
    const fields = { id: st.identity.id, serial: st.identity.serial, clientId: st.clientId, filter, reason: refusal, remote: st.remote }
    const store = sessionStore()
    const removing = store?.removeSubscriptions
    if (store === undefined || typeof removing !== 'function') return
    removing.call(store, client, [filter]).then(() => {
      audit('info', 'subscription.removed', fields)
    }, (err: unknown) => {
      audit('warn', 'subscription.remove_failed', { ...fields, detail: oneLine(err) })
    })
  }

  // Aedes answers a SUBSCRIBE with the QoS each filter asked for (handlers/subscribe.js reads it before asking
  // authorizeSubscribe, which can only refuse). So the request is lowered to what the policy grants as it is parsed,
  // and the SUBACK, the stored session and the deliveries all carry the granted QoS [MQTT-3.9.3].
  type PacketListener = (this: { client?: Client }, packet: ParsedPacket) => void
  /** Aedes' 'packet' listener (lib/client.js enqueue, one function for every connection) and its wrapper. */
  const onPacketWrappers = new WeakMap<PacketListener, PacketListener>()
  function grantOnParse (parser: unknown): boolean {
    const emitter = parser as { listeners?: (event: string) => unknown[], removeListener: (event: string, f: PacketListener) => void, on: (event: string, f: PacketListener) => void }
    if (typeof emitter.listeners !== 'function') return false
    const listeners = emitter.listeners('packet')
    const enqueue = listeners[0]
    if (listeners.length !== 1 || typeof enqueue !== 'function') return false
    const original = enqueue as PacketListener
    let wrapped = onPacketWrappers.get(original)
    if (wrapped === undefined) {
      wrapped = function onPacket (packet) {
        if (packet.cmd === 'subscribe' && this.client !== undefined) grantRequestedQos(this.client, packet)
        original.call(this, packet)
      }
      onPacketWrappers.set(original, wrapped)
    }
    emitter.removeListener('packet', original)
    emitter.on('packet', wrapped)
    return true
  }

  /** Lowers each filter's requested QoS to the granted one; refusals are left to authorizeSubscribe (and its audit). */
  function grantRequestedQos (client: Client, packet: ParsedPacket): void {
    const subs = packet.subscriptions
    if (packet.cmd !== 'subscribe' || !Array.isArray(subs)) return
    const st = states.get(client)
    // Not admitted yet: authenticate grants what was queued once it knows the identity.
    if (st === undefined || revocation === undefined || revocation.isRevoked(st.identity.serial)) return
    for (const sub of subs) {
      if (typeof sub.topic !== 'string' || checkTopicFilter(sub.topic, topicLimits) !== null) continue
      const granted = st.authorizer.subscribe(sub.topic, { qos: (sub.qos ?? 0) as Qos }).grantedQos
      if (granted !== undefined && granted < sub.qos) sub.qos = granted
    }
  }

  /** The subscription as granted: the same object when the policy leaves its QoS, a copy at the capped QoS otherwise. */
  function atGrantedQos (sub: Subscription, grantedQos: Qos | undefined): Subscription {
    const granted = grantedQos ?? sub.qos
    return granted < sub.qos ? { ...sub, qos: granted } : sub
  }

  // Aedes 1.x stores a persistent session's whole SUBSCRIBE packet once any filter in it is granted, refused ones
  // included: the session would then queue messages for them while offline (a device asking for `#` next to its own
  // filter would collect the fleet's QoS 1 traffic). Only what this connection is granted goes in, at the granted QoS.
  // Aedes has its persistence once it listens, and a library user may attach first: the wrappers go on then, at the
  // first admission, or now.
  const guarded = new WeakSet<object>()
  function guardSessions (): void {
    const sessions = sessionStore()
    if (sessions === undefined || guarded.has(sessions)) return
    guarded.add(sessions)
    keepGranted(sessions)
    withholdCompromisedRetained(sessions)
  }

  function keepGranted (sessions: SessionStore): void {
    const addSubscriptions = sessions.addSubscriptions
    if (typeof addSubscriptions !== 'function') return
    // Aedes calls this once per granted filter, each time with the whole packet's list: the first call stores what is
    // granted and the others, with the same list, share its result (one write and N decisions, not N of each).
    const storing = new WeakMap<Subscription[], Promise<unknown>>()
    sessions.addSubscriptions = function keepGranted (this: unknown, client: Client, subs: Subscription[]) {
      const st = states.get(client)
      if (st === undefined) return addSubscriptions.call(this, client, subs) // not a connection of ours (tools, tests)
      const earlier = storing.get(subs)
      if (earlier !== undefined) return earlier
      const kept: Subscription[] = []
      for (const sub of subs) {
        if (checkTopicFilter(sub.topic, topicLimits) !== null || revocation === undefined || revocation.isRevoked(st.identity.serial)) continue
        const d = st.authorizer.subscribe(sub.topic, { qos: (sub.qos ?? 0) as Qos })
        if (d.effect === 'allow') kept.push(atGrantedQos(sub, d.grantedQos))
      }
      const stored = kept.length === 0 ? Promise.resolve(client) : addSubscriptions.call(this, client, kept)
      storing.set(subs, stored)
      return stored
    }
  }

  // What a compromised key left retained is cleared (RetainedCleaner below), but a message can be retained after the
  // pass that would have cleared it (a node that had not heard of the revocation yet), or looked for before the first
  // pass of a node that just started. Aedes sends retained messages on SUBSCRIBE without their tag (it copies five
  // fields), so authorizeForward cannot tell: they are withheld where Aedes reads them.
  function withholdCompromisedRetained (sessions: SessionStore): void {
    const combi = sessions.createRetainedStreamCombi
    if (typeof combi !== 'function') return
    sessions.createRetainedStreamCombi = function withholdCompromised (this: unknown, patterns: string[]) {
      const source = combi.call(this, patterns)
      return Readable.from((async function * () {
        for await (const packet of source) if (!retainedFromCompromised(packet)) yield packet
      })())
    }
  }
  guardSessions()

  // ---- RECEIVE: every delivery (live, retained, queued offline, from other nodes); synchronous ---------------------
  aedes.authorizeForward = function authorizeForward (client, packet: AedesPublishPacket) {
    const st = states.get(client)
    if (st === undefined) return null
    if (revocation === undefined || revocation.isRevoked(st.identity.serial)) return null
    const d = st.judging === packet ? st.judged as Decision : st.authorizer.receive(packet.topic, messageOptions(packet.qos, packet.retain))
    if (d.effect === 'allow') {
      if (d.grantedQos !== undefined && d.grantedQos < packet.qos) capReplayed(client, packet, d.grantedQos)
      return packet
    }
    const logged = st.loggedReceive ??= new Set()
    if (!logged.has(packet.topic) && logged.size < MAX_LOGGED_RECEIVE) {
      logged.add(packet.topic)
      audit('warn', 'receive.denied', { id: st.identity.id, serial: st.identity.serial, topic: packet.topic, reason: d.reason, statement: d.statement ?? null, remote: st.remote })
    } else {
      // The log is throttled per topic; the counter is not.
      metrics?.record('receive.denied', {})
    }
    return null
  }

  // A receive entry's maxQos caps the QoS a message is delivered at. Aedes chooses the QoS path before it asks
  // authorizeForward, and a subscription keeps the delivery function it found at SUBSCRIBE, so each connection's
  // deliverQoS is wrapped at admission: it takes the receive decision first (authorizeForward reuses it, through the
  // connection record: one decision per delivery, nothing allocated when no cap applies), sends a message capped to
  // QoS 0 the QoS 0 way and takes the session's queued copy out of the outgoing queue, where no PUBACK would ever
  // clear it; one capped to QoS 1 goes the QoS 1 way and is cleared by its PUBACK as usual.
  function capDeliveries (client: Client, st: ConnState): boolean {
    const c = client as unknown as ClientInternals
    const deliverQoS = c.deliverQoS
    const deliver0 = c.deliver0
    if (typeof deliverQoS !== 'function' || typeof deliver0 !== 'function' || typeof c._nextId !== 'number') return false
    c.deliverQoS = function deliverCapped (packet, callback) {
      // QoS 0 goes to deliver0 inside; deliverQoS asks authorizeForward, which judges it then.
      if (packet.qos === 0) { deliverQoS(packet, callback); return }
      const d = st.authorizer.receive(packet.topic, messageOptions(packet.qos, packet.retain))
      st.judging = packet
      st.judged = d
      const granted = d.grantedQos
      if (d.effect !== 'allow') {
        // Aedes takes a refused message out of a persistent session's queue by its message id, which a live delivery
        // has not got yet: in memory that would remove whichever queued message has none (another one, still to be
        // delivered), in Redis none. So it gets its id here, and its queued copy goes the way a capped one does.
        if (!client.clean && packet.retain !== true) {
          const messageId = dequeue(client, packet)
          if (messageId !== undefined) packet.messageId = messageId
        }
        deliverQoS(packet, callback)
      } else if (granted === undefined || granted >= packet.qos) {
        deliverQoS(packet, callback)
      } else if (granted === 0) {
        // Aedes queues a persistent session's QoS > 0 messages before delivering them live (retained ones excepted).
        if (!client.clean && packet.retain !== true) dequeue(client, packet)
        deliver0(packet, callback)
      } else {
        packet.qos = granted
        deliverQoS(packet, callback)
      }
      st.judging = undefined
    }
    return true
  }

  /**
   * Removes one queued copy of a message from the client's outgoing queue (a message id first, as a delivery would);
   * returns the message id it gave it.
   */
  function dequeue (client: Client, packet: AedesPublishPacket): number | undefined {
    const store = sessionStore()
    const update = store?.outgoingUpdate
    const clear = store?.outgoingClearMessageId
    if (store === undefined || typeof update !== 'function' || typeof clear !== 'function') return undefined
    const c = client as unknown as ClientInternals
    const messageId = c._nextId
    c._nextId = messageId >= 65535 ? 1 : messageId + 1
    // The whole message: aedes-persistence-redis writes what it is given over the stored copy other sessions share.
    const queued = { ...packet, messageId }
    // When it is not queued (a failed enqueue), the update fails and there is nothing to clear.
    update.call(store, client, queued).then(() => clear.call(store, client, queued)).catch(noop)
    return messageId
  }

  /**
   * A capped delivery that did not come through deliverCapped: a session's queue replayed at CONNECT (Aedes writes the
   * packet it asked about, after giving it a message id and updating the queue), or deliver0 (QoS 0 whatever the
   * packet says). Aedes hands every delivery its own copy, so lowering the QoS in place is safe.
   */
  function capReplayed (client: Client, packet: AedesPublishPacket, granted: Qos): void {
    packet.qos = granted
    if (granted !== 0 || client.clean || typeof packet.messageId !== 'number') return
    // Sent at QoS 0, it gets no PUBACK: out of the queue now, or it would come back at every reconnect.
    const store = sessionStore()
    store?.outgoingClearMessageId?.call(store, client, packet).catch(noop)
  }

  // ---- revocation enforcement ----------------------------------------------------------------------------------------
  function cutOffClient (client: Client): void {
    const c = client as unknown as { will: unknown, _will: unknown, id: string }
    // A revoked device's will is never published: drop it in memory and in persistence before closing.
    c.will = null
    c._will = null
    broker.persistence?.delWill({ id: c.id, brokerId: aedes.id }).catch(() => {})
    client.close()
  }

  function cutOff (serial: string): number {
    const cur = bySerial.get(serial)
    if (cur === undefined) return 0
    const clients = cur instanceof Set ? [...cur] : [cur]
    bySerial.delete(serial)
    for (const client of clients) cutOffClient(client)
    return clients.length
  }

  const onRevoked = (rev: { serial: string, id: string, reason: string }, latencyMs: number): void => {
    const closed = cutOff(rev.serial)
    audit('warn', 'revocation.enforced', { id: rev.id, serial: rev.serial, reason: rev.reason, sessions: closed, latencyMs: Math.round(latencyMs * 1000) / 1000 })
    // Nothing a compromised key said can be trusted. Every node does this: with a shared persistence the second pass
    // finds nothing (idempotent), and no node has to be elected; the serial tag spares a newer certificate's messages.
    if (rev.reason === 'keyCompromise') cleaner.clear(rev)
  }
  // ---- keyCompromise: clearing retained messages (broker/retained.ts) -----------------------------------------------
  /** The revocation record of a serial revoked for keyCompromise, from the mirror; else null. */
  function compromised (serial: string): { serial: string, id: string, reason: string } | null {
    if (revocation === undefined || !revocation.isRevoked(serial)) return null
    const r = revocation.get(serial)
    return r?.reason === 'keyCompromise' ? r : null
  }
  function retainedFromCompromised (packet: unknown): boolean {
    const serial = publisherSerial(packet)
    return serial !== null && compromised(serial) !== null
  }
  const cleaner = new RetainedCleaner({
    persistence: () => broker.persistence,
    // For the sweep: the mirror answers for every tagged message, the reason included.
    compromised,
    onCleared: (rev, messages, trigger) => { audit('warn', 'retained.cleared', { id: rev.id, serial: rev.serial, reason: rev.reason, messages, trigger }) },
    // Every start logs one; it says what was found, not that anything was compromised.
    onSwept: (messages, serials) => { log.info({ event: 'retained.swept', id: null, serial: null, messages, serials }, `retained messages checked for keyCompromise-revoked publishers: ${messages} cleared`) },
    onFailed: (err, serials) => { audit('warn', 'retained.clear_failed', { reason: 'keyCompromise', serials, detail: oneLine(err) }) },
  })
  // Revocations made while no node ran (or before this one loaded the store) raise no event here: once the node is
  // current, one pass over the retained messages clears what any keyCompromise-revoked serial left.
  const sweepWhenCurrent = setInterval(() => { sweepOnce() }, 100)
  sweepWhenCurrent.unref()
  function sweepOnce (): void {
    if (revocation === undefined || store === undefined) { clearInterval(sweepWhenCurrent); return }
    // Aedes has a persistence once it listens (a library user may attach first).
    if (!revocation.state().current || (broker.persistence as RetainedStore | undefined) === undefined) return
    clearInterval(sweepWhenCurrent)
    cleaner.sweep()
  }
  sweepOnce()
  revocation?.on('revoked', onRevoked)

  return {
    tlsOptions,
    createServer () {
      if (serverOptions === undefined) throw new ZtError('ZT_BAD_CONFIG', 'zeroTrust: no CA configured (options.ca); refusing to serve TLS without one')
      // Our options trust our two CA certificates only, until someone swaps or adds a context: from then on this
      // server's connections get the full signature check again.
      let onlyOurCa = true
      const server = tls.createServer(serverOptions, (socket) => {
        if (onlyOurCa) (socket as { [OUR_TLS]?: boolean })[OUR_TLS] = true
        aedes.handle(socket)
      })
      const setSecureContext = server.setSecureContext.bind(server)
      const addContext = server.addContext.bind(server)
      server.setSecureContext = (options) => { onlyOurCa = false; setSecureContext(options) }
      server.addContext = (hostname, context) => { onlyOurCa = false; addContext(hostname, context) }
      server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
        audit('warn', 'connect.refused', { reason: 'tls-handshake', detail: err.code ?? err.message, remote: remoteOf(socket) })
        // Node emits this on a handshake timeout but leaves the socket open: without destroy() the timeout is moot.
        socket.destroy()
      })
      return server
    },
    connection (client) {
      const st = states.get(client)
      return st === undefined ? undefined : { identity: st.identity, clientId: st.clientId, remote: st.remote, connectedAt: new Date(st.connectedAtMs) }
    },
    get connections () {
      let n = 0
      for (const cur of bySerial.values()) n += cur instanceof Set ? cur.size : 1
      return n
    },
    cutOff,
    detach () {
      revocation?.off('revoked', onRevoked)
      clearInterval(sweepWhenCurrent)
      cleaner.close()
      aedes.off('client', onClient)
      aedes.off('clientError', onClientError)
      aedes.off('connectionError', onClientError)
    },
  }
}
