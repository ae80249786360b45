// Prometheus metrics of one broker: a private prom-client Registry fed by the same calls that write audit lines.
import 'reflect-metadata'
import * as x509 from '@peculiar/x509'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

/**
 * What the plugin and the server call: `record` once for every audit line they write (the event name and its
 * fields), so a counter moves exactly where the log says something happened.
 */
export interface MetricsRecorder {
  record (event: string, fields: Readonly<Record<string, unknown>>): void
  /** An accepted connection closed (no audit line: closing is not a security event). */
  connectionClosed (kind: string): void
}

export interface MetricsSources {
  /** The revocation mirror (read at scrape time). */
  revocation?: { state (): { stalenessMs: number, current: boolean, size: number } }
  /** The latest stored CRL, for its age (read at scrape time). */
  loadCrl?: () => Promise<{ der: Uint8Array, number: bigint } | null>
}

/** Enforcement latency buckets, in seconds: the contract is 100 ms p99, so the interesting range is 1-500 ms. */
export const ENFORCEMENT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5]

/** Label values come from our own constants; anything else is folded so a bug cannot explode cardinality. */
function label (v: unknown): string {
  return typeof v === 'string' && /^[a-z0-9][a-z0-9.-]{0,47}$/i.test(v) ? v : 'other'
}

const DENIAL_EVENTS: Readonly<Record<string, string>> = {
  'publish.denied': 'publish',
  'subscribe.denied': 'subscribe',
  'receive.denied': 'receive',
  'will.denied': 'will',
}

export class BrokerMetrics implements MetricsRecorder {
  /** Per broker, never prom-client's global one: several brokers in one process must not share counters. */
  readonly registry = new Registry()
  readonly #connections: Gauge<'kind'>
  readonly #accepted: Counter<'kind'>
  readonly #refused: Counter<'reason'>
  readonly #denials: Counter<'action'>
  readonly #violations: Counter<'reason'>
  readonly #revocations: Counter
  readonly #sessionsCut: Counter
  readonly #enforcement: Histogram
  readonly #reloads: Counter
  readonly #reloadFailures: Counter
  readonly #admin: Counter<'route' | 'status'>
  /** The last CRL parsed, by number: the DER only changes when a new CRL is stored. */
  #crlSeen: { number: bigint, thisUpdate: number } | undefined

  constructor (sources: MetricsSources = {}) {
    const registers = [this.registry]
    this.#connections = new Gauge({ name: 'aedes_zt_connections', help: 'Live authenticated MQTT connections, by certificate kind', labelNames: ['kind'], registers })
    this.#accepted = new Counter({ name: 'aedes_zt_connections_accepted_total', help: 'MQTT connections accepted, by certificate kind', labelNames: ['kind'], registers })
    this.#refused = new Counter({ name: 'aedes_zt_connections_refused_total', help: 'Connections refused at TLS or CONNECT, by audit reason', labelNames: ['reason'], registers })
    this.#denials = new Counter({ name: 'aedes_zt_authorization_denials_total', help: 'Requests refused by policy, by action (publish, subscribe, receive, will)', labelNames: ['action'], registers })
    this.#violations = new Counter({ name: 'aedes_zt_protocol_violations_total', help: 'Connections closed for a protocol violation, by reason', labelNames: ['reason'], registers })
    this.#revocations = new Counter({ name: 'aedes_zt_revocations_applied_total', help: 'Revocations this node learned from the store and enforced', registers })
    this.#sessionsCut = new Counter({ name: 'aedes_zt_revocation_sessions_closed_total', help: 'Live sessions closed because their certificate was revoked', registers })
    this.#enforcement = new Histogram({ name: 'aedes_zt_revocation_enforcement_seconds', help: 'Time from a revocation being durable to this node enforcing it', buckets: ENFORCEMENT_BUCKETS, registers })
    this.#reloads = new Counter({ name: 'aedes_zt_policy_reloads_total', help: 'Policy changes loaded and put in force', registers })
    this.#reloadFailures = new Counter({ name: 'aedes_zt_policy_reload_failures_total', help: 'Policy changes rejected (the last good set stayed in force)', registers })
    this.#admin = new Counter({ name: 'aedes_zt_admin_requests_total', help: 'Admin API requests, by route and HTTP status', labelNames: ['route', 'status'], registers })
    // Pre-create the label sets people alert on, so a rate() has a zero to start from.
    for (const kind of ['device', 'service']) { this.#connections.set({ kind }, 0); this.#accepted.inc({ kind }, 0) }
    for (const action of Object.values(DENIAL_EVENTS)) this.#denials.inc({ action }, 0)

    const revocation = sources.revocation
    new Gauge({
      name: 'aedes_zt_revocation_staleness_seconds',
      help: 'Seconds since this node last confirmed it knows every revocation (+Inf before the first load)',
      registers,
      collect () { if (revocation !== undefined) this.set(revocation.state().stalenessMs / 1000) },
    })
    new Gauge({
      name: 'aedes_zt_revocation_current',
      help: '1 while the revocation mirror is current and the node admits new connections, else 0',
      registers,
      collect () { if (revocation !== undefined) this.set(revocation.state().current ? 1 : 0) },
    })
    new Gauge({
      name: 'aedes_zt_revoked_serials',
      help: 'Revoked serials known to this node',
      registers,
      collect () { if (revocation !== undefined) this.set(revocation.state().size) },
    })
    const loadCrl = sources.loadCrl
    const crlAge = (): Promise<number> => this.#crlAge(loadCrl)
    new Gauge({
      name: 'aedes_zt_crl_age_seconds',
      help: 'Seconds since thisUpdate of the latest stored CRL (NaN when none was made or the store cannot be read)',
      registers,
      async collect () { this.set(await crlAge()) },
    })
  }

  record (event: string, fields: Readonly<Record<string, unknown>>): void {
    const denied = DENIAL_EVENTS[event]
    if (denied !== undefined) { this.#denials.inc({ action: denied }); return }
    switch (event) {
      case 'connect.accepted': {
        const kind = label(fields.kind)
        this.#accepted.inc({ kind })
        this.#connections.inc({ kind })
        return
      }
      case 'connect.refused':
        this.#refused.inc({ reason: label(fields.reason) })
        // A forbidden Last Will refuses the CONNECT; it is a will denial as much as a refused connection.
        if (fields.reason === 'will-forbidden') this.#denials.inc({ action: 'will' })
        return
      case 'protocol.violation':
        this.#violations.inc({ reason: label(fields.reason) })
        return
      case 'revocation.enforced': {
        this.#revocations.inc()
        const sessions = typeof fields.sessions === 'number' ? fields.sessions : 0
        if (sessions > 0) this.#sessionsCut.inc(sessions)
        // Clocks of the revoking host and this one may differ slightly; a negative latency is a zero.
        if (typeof fields.latencyMs === 'number' && Number.isFinite(fields.latencyMs)) this.#enforcement.observe(Math.max(0, fields.latencyMs) / 1000)
        return
      }
      case 'policies.reloaded':
        this.#reloads.inc()
        return
      case 'policies.rejected':
        this.#reloadFailures.inc()
        return
      case 'admin.call':
        this.#admin.inc({ route: typeof fields.route === 'string' ? fields.route : 'other', status: String(fields.status ?? 'other') })
    }
  }

  connectionClosed (kind: string): void {
    this.#connections.dec({ kind: label(kind) })
  }

  /** The Prometheus text exposition of this broker's metrics. */
  async scrape (): Promise<{ contentType: string, body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }

  async #crlAge (loadCrl: MetricsSources['loadCrl']): Promise<number> {
    if (loadCrl === undefined) return Number.NaN
    let crl
    try {
      crl = await loadCrl()
    } catch {
      // A scrape must not fail because the store is down; the staleness gauge already tells that story.
      return Number.NaN
    }
    if (crl === null) return Number.NaN
    if (this.#crlSeen?.number !== crl.number) {
      try {
        this.#crlSeen = { number: crl.number, thisUpdate: new x509.X509Crl(crl.der).thisUpdate.getTime() }
      } catch {
        return Number.NaN
      }
    }
    return (Date.now() - this.#crlSeen.thisUpdate) / 1000
  }
}
