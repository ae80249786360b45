// Library entry (`aedes-zero-trust`): the zeroTrust plugin, the ready broker, and the CA and policy building blocks.
import 'reflect-metadata'

export { zeroTrust } from './broker/plugin.js'
export type { ZeroTrust, ZeroTrustOptions, ConnectionInfo } from './broker/plugin.js'
export { startBroker, createLogger } from './broker/server.js'
export type { RunningBroker, StartOptions, AedesBackends } from './broker/server.js'
export { resolveConfig, defaultConfig } from './broker/config.js'
export type { BrokerConfig, ConfigInput, ConfigSources } from './broker/config.js'
export { DEFAULT_LIMITS } from './broker/limits.js'
export type { BrokerLimits } from './broker/limits.js'
export { tlsServerOptions, trustFromHome } from './broker/tls.js'
export type { TrustMaterial } from './broker/tls.js'
export { readIdentity, IdentityReader, trustAnchor } from './broker/identity.js'
export type { Identity, IdentityResult, IdentityRefusal } from './broker/identity.js'
export { ownTopicsAuthorizer } from './broker/authorizer.js'
export type { Authorizer, AuthorizerFactory, AuthIdentity, Decision } from './broker/authorizer.js'
export { CONNACK } from './broker/decide.js'
export type { RevocationView } from './broker/decide.js'
export { RevocationMirror } from './broker/revocation.js'
export type { MirrorState, RevocationMirrorOptions } from './broker/revocation.js'
export { ZtError, ErrorCodes, isZtError } from './common/errors.js'
export type { ErrorCode } from './common/errors.js'

/** The built-in CA (also importable as `aedes-zero-trust/ca`). */
export * as ca from './ca/index.js'
/** The policy engine (also importable as `aedes-zero-trust/policies`). */
export * as policies from './policies/index.js'
