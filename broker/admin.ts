// The admin API: JSON over mutual TLS for operator certificates only; issue, list, revoke, CRL and policy explain.
import https from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { TLSSocket } from 'node:tls'
import type { Logger } from 'pino'
import { openAuthority, revokeIn, type Authority } from '../ca/index.js'
import { isZtError, oneLine, ZtError, type ErrorCode } from '../common/errors.js'
import { canonicalSerial, checkGroup, checkId, checkKind, checkReason, REVOCATION_REASONS, type RevocationReason } from '../common/ids.js'
import { describeDecision, explain, type PolicySource, type Qos, type Request } from '../policies/index.js'
import type { CertStatus, CertStore, RevokeResult } from '../store/types.js'
import { CONNACK, decideConnect, type RevocationView } from './decide.js'
import { IdentityReader, trustAnchor, type Identity } from './identity.js'
import type { BrokerLimits } from './limits.js'
import type { MetricsRecorder } from './metrics.js'
import { tlsServerOptions, type TrustMaterial } from './tls.js'
import { remoteOf } from './plugin.js'
import { CrlService } from './crl.js'

/** Largest request body: a CSR for an RSA-4096 key is about 2 KiB, so this is generous and still bounded. */
export const ADMIN_MAX_BODY_BYTES = 64 * 1024

export interface AdminOptions {
  ca: TrustMaterial
  limits: Pick<BrokerLimits, 'handshakeTimeoutMs'>
  store: CertStore
  /** Operators are revoked like anyone else: their next request is refused. */
  revocation: RevocationView
  /** The broker's live policies, so `explain` answers what the broker enforces now. */
  policies: PolicySource
  requireIssuedSerial: boolean
  /** The CA with its private keys, or null: issuing and CRL signing then answer 503 ZT_CA_UNAVAILABLE. */
  authority: Authority | null
  /** Why `authority` is null, for the 503 message. */
  authorityProblem?: string
  logger: Logger
  metrics?: MetricsRecorder | undefined
  /** Checks the stored CRL before GET /v1/crl hands it out. @default a CrlService of its own (serving only) */
  crl?: Pick<CrlService, 'verified'>
}

/** Opens the CA for the admin API; a broker without the passphrase still serves the routes that need no key. */
export async function openAdminAuthority (homeDir: string, store: CertStore, env: NodeJS.ProcessEnv): Promise<{ authority: Authority } | { authority: null, problem: string }> {
  try {
    return { authority: await openAuthority(homeDir, { store, env }) }
  } catch (err) {
    return { authority: null, problem: oneLine(err) }
  }
}

/** Every code the admin API answers with, and its HTTP status (docs/integrations.md lists them; a test checks). */
export const ADMIN_ERROR_STATUS: Readonly<Partial<Record<ErrorCode, number>>> = Object.freeze({
  ZT_BAD_ARGUMENT: 400,
  ZT_BAD_ID: 400,
  ZT_BAD_KIND: 400,
  ZT_BAD_CSR: 400,
  ZT_WEAK_KEY: 400,
  ZT_BAD_REASON: 400,
  ZT_FORBIDDEN: 403,
  ZT_UNKNOWN_SERIAL: 404,
  ZT_UNKNOWN_ID: 404,
  ZT_NOT_FOUND: 404,
  ZT_BAD_METHOD: 405,
  ZT_TOO_LARGE: 413,
  ZT_INTERNAL: 500,
  // The issuing CA has expired: nothing the caller can fix by changing the request.
  ZT_BAD_CERT: 503,
  ZT_CA_UNAVAILABLE: 503,
  ZT_STORE_UNAVAILABLE: 503,
})

/** HTTP status for a ZtError code; anything unexpected is the server's fault. */
export function httpStatusOf (code: ErrorCode): number {
  return ADMIN_ERROR_STATUS[code] ?? 500
}

/** A reply: JSON (any value) or raw bytes with their content type. */
type Reply = { status: number, json: unknown } | { status: number, raw: Uint8Array | string, contentType: string }

/** Audit fields a handler adds about what it acted on (never secrets). */
type Target = Record<string, unknown>

interface Call {
  operator: Identity
  params: string[]
  query: URLSearchParams
  body: Record<string, unknown>
  headers: IncomingMessage['headers']
  target: Target
}

interface Route {
  method: 'GET' | 'POST'
  pattern: RegExp
  /** Stable name for logs and metrics: the path with its parameters as {names}. */
  name: string
  handle (call: Call): Promise<Reply>
}

function fail (code: ErrorCode, message: string, context: Record<string, unknown> = {}): never {
  throw new ZtError(code, message, context)
}

// ---- body and query validation: strict, so a typo is an error rather than a silently ignored field -------------------

function onlyKeys (obj: Record<string, unknown>, allowed: readonly string[], op: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) fail('ZT_BAD_ARGUMENT', `${op}: unknown field ${JSON.stringify(k)}; known fields: ${allowed.join(', ')}`, { field: k })
  }
}

function optString (obj: Record<string, unknown>, key: string, op: string): string | undefined {
  const v = obj[key]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'string') fail('ZT_BAD_ARGUMENT', `${op}: ${key} must be a string, got ${typeof v}`, { field: key })
  return v
}

function reqString (obj: Record<string, unknown>, key: string, op: string): string {
  const v = optString(obj, key, op)
  if (v === undefined || v === '') fail('ZT_BAD_ARGUMENT', `${op}: ${key} is required`, { field: key })
  return v
}

function optGroups (obj: Record<string, unknown>, op: string): string[] {
  const v = obj.groups
  if (v === undefined || v === null) return []
  if (!Array.isArray(v) || !v.every((g) => typeof g === 'string')) fail('ZT_BAD_ARGUMENT', `${op}: groups must be an array of strings`, { field: 'groups' })
  return v.map((g: string) => checkGroup(g, op))
}

function optReason (obj: Record<string, unknown>, op: string): RevocationReason {
  const v = optString(obj, 'reason', op) ?? 'unspecified'
  // checkReason tests with `in`, which also accepts Object.prototype names ("constructor"): only own keys are reasons.
  if (!Object.hasOwn(REVOCATION_REASONS, v)) {
    fail('ZT_BAD_REASON', `${op}: reason ${JSON.stringify(v.slice(0, 80))} is not one of ${Object.keys(REVOCATION_REASONS).filter((r) => r !== 'removeFromCRL' && r !== 'certificateHold').join(', ')}`, { reason: v.slice(0, 80) })
  }
  return checkReason(v, op)
}

function qosOf (obj: Record<string, unknown>, op: string): Qos {
  const v = obj.qos ?? 0
  if (v !== 0 && v !== 1 && v !== 2) fail('ZT_BAD_ARGUMENT', `${op}: qos ${JSON.stringify(v)} must be 0, 1 or 2`, { field: 'qos' })
  return v
}

function serialParam (raw: string, op: string): string {
  let decoded: string
  try {
    decoded = decodeURIComponent(raw)
  } catch {
    return fail('ZT_BAD_ARGUMENT', `${op}: serial ${JSON.stringify(raw.slice(0, 80))} is not valid percent-encoding`, { serial: raw.slice(0, 80) })
  }
  const s = canonicalSerial(decoded)
  if (s === null) fail('ZT_BAD_ARGUMENT', `${op}: serial ${JSON.stringify(raw.slice(0, 80))} is not hexadecimal`, { serial: raw.slice(0, 80) })
  return s
}

function revokedJson (results: readonly RevokeResult[]): unknown {
  return { revoked: results.map((r) => ({ ...r.revocation, created: r.created })) }
}

function wantsPem (headers: IncomingMessage['headers']): boolean {
  const accept = String(headers.accept ?? '')
  return /application\/x-pem-file|application\/pem-certificate-chain|text\/plain/i.test(accept)
}

function crlReply (der: Uint8Array, pem: boolean, status = 200): Reply {
  if (!pem) return { status, raw: der, contentType: 'application/pkix-crl' }
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')
  return { status, raw: `-----BEGIN X509 CRL-----\n${b64}\n-----END X509 CRL-----\n`, contentType: 'application/x-pem-file' }
}

const STATUSES: readonly CertStatus[] = ['active', 'revoked', 'expired']

function routes (o: AdminOptions): Route[] {
  const needCa = (op: string): Authority => {
    if (o.authority !== null) return o.authority
    return fail('ZT_CA_UNAVAILABLE', `${op}: this broker cannot use the CA private keys (${o.authorityProblem ?? 'not opened'}); set AEDES_ZT_CA_PASSPHRASE for the broker and restart it, or use the aedes-zt CLI`)
  }
  // The store is not trusted: a CRL our issuing CA did not sign (or an older one put back) is never handed out as ours.
  const crl = o.crl ?? new CrlService({ store: o.store, issuingPem: o.ca.issuingPem, logger: o.logger })
  return [
    {
      method: 'GET',
      pattern: /^\/v1\/whoami$/,
      name: 'GET /v1/whoami',
      async handle ({ operator }) {
        const { id, kind, groups, serial, notAfter } = operator
        return { status: 200, json: { id, kind, groups, serial, notAfter: notAfter.toISOString() } }
      },
    },
    {
      method: 'POST',
      pattern: /^\/v1\/certificates$/,
      name: 'POST /v1/certificates',
      async handle ({ body, target }) {
        const op = 'admin issue'
        onlyKeys(body, ['id', 'kind', 'groups', 'days', 'csr'], op)
        const id = checkId(reqString(body, 'id', op), op)
        const kind = checkKind(optString(body, 'kind', op) ?? 'device', op)
        const groups = optGroups(body, op)
        const days = body.days
        if (days !== undefined && (typeof days !== 'number' || !Number.isInteger(days))) fail('ZT_BAD_ARGUMENT', `${op}: days ${JSON.stringify(days)} must be an integer`, { field: 'days' })
        // Keys are made where they are used: the API signs CSRs only, so no private key ever crosses it.
        const csr = reqString(body, 'csr', op)
        Object.assign(target, { targetId: id, targetKind: kind })
        const authority = needCa(op)
        const bundle = await authority.sign({ id, kind, groups, csr, ...(days === undefined ? {} : { days }) }, op)
        await o.store.recordIssued([bundle.record])
        target.targetSerial = bundle.record.serial
        return { status: 201, json: { ...bundle.record, certificate: bundle.bundlePem } }
      },
    },
    {
      method: 'GET',
      pattern: /^\/v1\/certificates$/,
      name: 'GET /v1/certificates',
      async handle ({ query }) {
        const op = 'admin list'
        for (const k of query.keys()) if (k !== 'id' && k !== 'status') fail('ZT_BAD_ARGUMENT', `${op}: unknown query parameter ${JSON.stringify(k)}; known: id, status`, { field: k })
        const id = query.get('id')
        const status = query.get('status')
        if (status !== null && !(STATUSES as readonly string[]).includes(status)) fail('ZT_BAD_ARGUMENT', `${op}: status ${JSON.stringify(status)} is not one of ${STATUSES.join(', ')}`, { status })
        const list = await o.store.list({
          ...(id === null ? {} : { id: checkId(id, op) }),
          ...(status === null ? {} : { status: status as CertStatus }),
        })
        return { status: 200, json: { certificates: list } }
      },
    },
    {
      method: 'GET',
      pattern: /^\/v1\/certificates\/([^/]+)$/,
      name: 'GET /v1/certificates/{serial}',
      async handle ({ params }) {
        const op = 'admin show'
        const serial = serialParam(params[0] ?? '', op)
        const record = await o.store.getIssued(serial)
        if (record === null) fail('ZT_UNKNOWN_SERIAL', `${op}: serial ${serial} was not issued by this CA`, { serial })
        const found = (await o.store.list({ id: record.id })).find((c) => c.serial === serial)
        if (found === undefined) fail('ZT_UNKNOWN_SERIAL', `${op}: serial ${serial} was not issued by this CA`, { serial })
        return { status: 200, json: found }
      },
    },
    {
      method: 'POST',
      pattern: /^\/v1\/certificates\/([^/]+)\/revoke$/,
      name: 'POST /v1/certificates/{serial}/revoke',
      async handle ({ params, body, target }) {
        const op = 'admin revoke'
        onlyKeys(body, ['reason'], op)
        const serial = serialParam(params[0] ?? '', op)
        const reason = optReason(body, op)
        Object.assign(target, { targetSerial: serial, revocationReason: reason })
        const results = await revokeIn(o.store, { serial }, reason)
        target.targetId = results[0]?.revocation.id ?? null
        return { status: 200, json: revokedJson(results) }
      },
    },
    {
      method: 'POST',
      pattern: /^\/v1\/revocations$/,
      name: 'POST /v1/revocations',
      async handle ({ body, target }) {
        const op = 'admin revoke'
        onlyKeys(body, ['id', 'serial', 'reason'], op)
        const id = optString(body, 'id', op)
        const serial = optString(body, 'serial', op)
        if ((id === undefined) === (serial === undefined)) fail('ZT_BAD_ARGUMENT', `${op}: give exactly one of id and serial`)
        const reason = optReason(body, op)
        Object.assign(target, id === undefined ? { targetSerial: serial } : { targetId: id }, { revocationReason: reason })
        const results = await revokeIn(o.store, id === undefined ? { serial: serialParam(serial ?? '', op) } : { id }, reason)
        target.targetSerials = results.map((r) => r.revocation.serial)
        return { status: 200, json: revokedJson(results) }
      },
    },
    {
      method: 'GET',
      pattern: /^\/v1\/crl$/,
      name: 'GET /v1/crl',
      async handle ({ headers }) {
        const der = await crl.verified()
        if (der === null) fail('ZT_NOT_FOUND', 'admin crl: no CRL has been made yet; POST /v1/crl (or aedes-zt crl) makes one')
        return crlReply(der, wantsPem(headers))
      },
    },
    {
      method: 'POST',
      pattern: /^\/v1\/crl$/,
      name: 'POST /v1/crl',
      async handle ({ body, headers }) {
        const op = 'admin crl'
        onlyKeys(body, [], op)
        const der = await needCa(op).crl()
        return crlReply(der, wantsPem(headers), 201)
      },
    },
    {
      method: 'POST',
      pattern: /^\/v1\/explain$/,
      name: 'POST /v1/explain',
      async handle ({ body, target }) {
        const op = 'admin explain'
        onlyKeys(body, ['id', 'kind', 'groups', 'serial', 'publish', 'subscribe', 'receive', 'qos', 'retain'], op)
        const id = checkId(reqString(body, 'id', op), op)
        const kind = checkKind(optString(body, 'kind', op) ?? 'device', op)
        const groups = optGroups(body, op)
        const rawSerial = optString(body, 'serial', op)
        const serial = rawSerial === undefined ? undefined : serialParam(rawSerial, op)
        const given = (['publish', 'subscribe', 'receive'] as const).filter((a) => body[a] !== undefined)
        if (given.length !== 1) fail('ZT_BAD_ARGUMENT', `${op}: give exactly one of publish (topic), subscribe (filter), receive (topic)`)
        const action = given[0] as 'publish' | 'subscribe' | 'receive'
        const topic = reqString(body, action, op)
        const qos = qosOf(body, op)
        if (body.retain !== undefined && typeof body.retain !== 'boolean') fail('ZT_BAD_ARGUMENT', `${op}: retain must be true or false`, { field: 'retain' })
        const retain = body.retain === true
        if (action === 'subscribe' && retain) fail('ZT_BAD_ARGUMENT', `${op}: retain applies to publish and receive, not subscribe`)
        const request: Request = action === 'subscribe' ? { action, filter: topic, qos } : { action, topic, qos, retain }
        target.targetId = id
        const { decision, statements } = explain(o.policies, { id, kind, groups, ...(serial === undefined ? {} : { serial }) }, request)
        return {
          status: 200,
          json: {
            ...decision,
            description: describeDecision(decision),
            request: action === 'subscribe' ? { action, filter: topic, qos } : { action, topic, qos, retain },
            identity: { id, kind, groups, serial: serial ?? null },
            statements,
          },
        }
      },
    },
  ]
}

/** Reads a JSON object body of at most ADMIN_MAX_BODY_BYTES; an empty body is `{}`. */
async function readBody (req: IncomingMessage, op: string): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? '0')
  if (declared > ADMIN_MAX_BODY_BYTES) fail('ZT_TOO_LARGE', `${op}: body of ${declared} bytes is over the ${ADMIN_MAX_BODY_BYTES}-byte limit`, { bytes: declared })
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > ADMIN_MAX_BODY_BYTES) fail('ZT_TOO_LARGE', `${op}: body is over the ${ADMIN_MAX_BODY_BYTES}-byte limit`, { bytes: size })
    chunks.push(chunk as Buffer)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  if (text.trim() === '') return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    return fail('ZT_BAD_ARGUMENT', `${op}: body is not valid JSON (${oneLine(err)})`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) fail('ZT_BAD_ARGUMENT', `${op}: body must be a JSON object`)
  return parsed as Record<string, unknown>
}

function send (res: ServerResponse, reply: Reply, close: boolean): void {
  const headers: Record<string, string> = { 'cache-control': 'no-store' }
  if (close) headers.connection = 'close'
  if ('json' in reply) {
    const body = JSON.stringify(reply.json)
    res.writeHead(reply.status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) })
    res.end(body)
    return
  }
  const data = typeof reply.raw === 'string' ? Buffer.from(reply.raw, 'utf8') : Buffer.from(reply.raw)
  res.writeHead(reply.status, { ...headers, 'content-type': reply.contentType, 'content-length': String(data.length) })
  res.end(data)
}

/**
 * Who a refused certificate names, for the audit line only (never for a decision): the chain was verified by TLS, so
 * it is one of ours, but the identity check refused it (wrong kind, say) and produced no Identity.
 */
function presentedBy (socket: TLSSocket): { id: string | null, serial: string | null, kind: null } | undefined {
  if (!socket.authorized) return undefined
  const peer = socket.getPeerCertificate()
  const cn = peer?.subject?.CN
  return { id: typeof cn === 'string' ? cn : null, serial: typeof peer?.serialNumber === 'string' ? canonicalSerial(peer.serialNumber) : null, kind: null }
}

function errorReply (err: ZtError, extra: Record<string, unknown> = {}): Reply {
  return { status: httpStatusOf(err.code), json: { error: { code: err.code, message: err.message, ...extra } } }
}

/**
 * The admin API's HTTPS server (not yet listening). Every request is authenticated on its own (a keep-alive
 * connection of an operator revoked meanwhile is refused at its next request) and logged as `admin.call`.
 */
export function createAdminServer (o: AdminOptions): https.Server {
  const table = routes(o)
  // A reader of its own: its cache holds answers for operator certificates, the MQTT reader's for devices and services.
  const reader = new IdentityReader(trustAnchor(o.ca.issuingPem, o.ca.trustDomain), 1_000, ['operator'])

  const audit = (level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void => {
    o.logger[level]({ event, id: null, serial: null, ...fields }, event)
    o.metrics?.record(event, fields)
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = Date.now()
    const url = new URL(req.url ?? '/', 'https://admin.invalid')
    const method = req.method ?? 'GET'
    const socket = req.socket as TLSSocket
    const remote = remoteOf(req.socket)
    let operator: Identity | undefined
    let presented: { id: string | null, serial: string | null, kind: string | null } | undefined
    let route: Route | undefined
    let reply: Reply
    let failure: { code: string, reason?: string, message: string } | undefined
    const target: Target = {}
    let close = false
    try {
      const decision = await decideConnect({
        configured: true,
        tls: true,
        tlsAuthorized: socket.authorized,
        certificate: socket.getPeerCertificate(false)?.raw,
        reader,
        revocation: o.revocation,
        store: o.requireIssuedSerial ? o.store : undefined,
        requireIssuedSerial: o.requireIssuedSerial,
      })
      if (!decision.ok) {
        presented = decision.identity ?? presentedBy(socket)
        const code: ErrorCode = decision.code === CONNACK.serverUnavailable ? 'ZT_STORE_UNAVAILABLE' : 'ZT_FORBIDDEN'
        throw new ZtError(code, `admin API: ${decision.detail}`, { reason: decision.reason })
      }
      operator = decision.identity
      const path = url.pathname
      let params: string[] = []
      route = table.find((r) => {
        const m = r.pattern.exec(path)
        if (m === null || r.method !== method) return false
        params = m.slice(1)
        return true
      })
      if (route === undefined) {
        const other = table.find((r) => r.pattern.test(path))
        if (other !== undefined) fail('ZT_BAD_METHOD', `admin API: ${path} does not accept ${method}; use ${table.filter((r) => r.pattern.test(path)).map((r) => r.method).join(' or ')}`)
        fail('ZT_NOT_FOUND', `admin API: no route ${method} ${path.slice(0, 200)}`)
      }
      const body = method === 'POST' ? await readBody(req, route.name) : {}
      reply = await route.handle({ operator, params, query: url.searchParams, body, headers: req.headers, target })
    } catch (err) {
      if (isZtError(err)) {
        const reason = typeof err.context.reason === 'string' ? err.context.reason : undefined
        reply = errorReply(err, reason === undefined ? {} : { reason })
        failure = { code: err.code, message: err.message, ...(reason === undefined ? {} : { reason }) }
        // An unread or oversized body would otherwise be parsed as the next request on this connection.
        close = err.code === 'ZT_TOO_LARGE' || !req.complete
      } else {
        o.logger.error({ event: 'admin.error', route: route?.name ?? null, reason: oneLine(err) }, 'admin API: unexpected failure')
        reply = errorReply(new ZtError('ZT_INTERNAL', 'admin API: internal error; see the broker log'))
        failure = { code: 'ZT_INTERNAL', message: oneLine(err) }
        close = !req.complete
      }
    }
    send(res, reply, close)
    const who = operator ?? presented
    audit(reply.status < 400 ? 'info' : 'warn', 'admin.call', {
      id: who?.id ?? null,
      serial: who?.serial ?? null,
      kind: who?.kind ?? null,
      method,
      route: route?.name ?? 'unmatched',
      status: reply.status,
      ...(failure === undefined ? { reason: 'operator-certificate' } : { code: failure.code, reason: failure.reason ?? failure.code, detail: failure.message }),
      ...target,
      remote,
      ms: Date.now() - started,
    })
  }

  const server = https.createServer(tlsServerOptions(o.ca, o.limits), (req, res) => {
    handle(req, res).catch((err: unknown) => {
      // handle() answers every error itself; reaching here means the response could not even be written.
      o.logger.error({ event: 'admin.error', reason: oneLine(err) }, 'admin API: could not answer')
      res.destroy()
    })
  })
  // Admin calls are small; a slow client must not hold a socket open for Node's generous defaults.
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  server.keepAliveTimeout = 5_000
  server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    audit('warn', 'admin.refused', { reason: 'tls-handshake', detail: err.code ?? err.message, remote: socket.remoteAddress ?? 'unknown' })
    socket.destroy()
  })
  return server
}
