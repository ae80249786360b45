// Every error a user can cause carries a stable code from this table; the CLI prints `message` as one line.

/**
 * Stable error codes. Each one is documented in the README ("Error codes"); a test checks that.
 * Add new codes here, never reuse or rename one.
 */
export const ErrorCodes = {
  ZT_BAD_ARGUMENT: 'a command-line argument or API parameter is missing or malformed',
  ZT_BAD_ID: 'an identity id is outside the id alphabet or length',
  ZT_BAD_KIND: 'an identity kind is not device, service or operator',
  ZT_BAD_CSR: 'a certificate signing request is unreadable, malformed or its signature does not verify',
  ZT_WEAK_KEY: 'a key is weaker than the CA issues (RSA below 2048 bits, or an unsupported curve)',
  ZT_BAD_CERT: 'a certificate does not meet the profile the broker requires',
  ZT_NO_HOME: 'the CA home directory does not exist or holds no CA',
  ZT_HOME_EXISTS: 'ca init was asked to create a CA where one already exists',
  ZT_NO_PASSPHRASE: 'AEDES_ZT_CA_PASSPHRASE is not set and the home is not a dev home',
  ZT_BAD_PASSPHRASE: 'the CA passphrase does not decrypt the CA private keys',
  ZT_UNKNOWN_SERIAL: 'no certificate with that serial was issued by this CA',
  ZT_UNKNOWN_ID: 'no active certificate exists for that id',
  ZT_BAD_REASON: 'a revocation reason is not one of the RFC 5280 reason names',
  ZT_BAD_MANIFEST: 'a bulk issuance manifest is unreadable or has a malformed row',
  ZT_BAD_POLICY: 'a policy file fails validation',
  ZT_BAD_CONFIG: 'the broker configuration has an unknown key or a bad value',
  ZT_STORE_UNAVAILABLE: 'the certificate store (files or Redis) cannot be read or written',
  ZT_IO: 'a file could not be read or written',
  ZT_FORBIDDEN: 'the admin API refused the client certificate (not an active operator certificate of this CA)',
  ZT_NOT_FOUND: 'the admin API has no such route, or the thing asked for does not exist yet',
  ZT_BAD_METHOD: 'the admin API route exists but not with this HTTP method',
  ZT_TOO_LARGE: 'an admin API request body is larger than the limit',
  ZT_CA_UNAVAILABLE: 'the broker cannot use the CA private keys (no or wrong passphrase), so it cannot issue or sign',
  ZT_INTERNAL: 'an unexpected failure inside the broker; the broker log has the details',
} as const

export type ErrorCode = keyof typeof ErrorCodes

/** An error a user caused or must act on: a stable code, a one-line message naming the operation, and context. */
export class ZtError extends Error {
  override readonly name = 'ZtError'
  readonly code: ErrorCode
  readonly context: Readonly<Record<string, unknown>>

  constructor (code: ErrorCode, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.context = Object.freeze({ ...context })
  }
}

export function isZtError (err: unknown): err is ZtError {
  return err instanceof ZtError
}

/** One line for a human: never a stack trace, never a multi-line dump. */
export function oneLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.replace(/\s*\n\s*/g, ' ').trim()
}
