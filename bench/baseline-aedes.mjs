// Baseline (a): plain Aedes 1.x over node:tls with requestCert and hand-rolled auth, the way users write it without us:
// identity = the certificate's CN, a device may publish/subscribe under devices/<CN>/, the ingest service reads
// devices/+/telemetry. Same TLS settings as the broker. Prints "listening on port N".
//
//   node bench/baseline-aedes.mjs --home DIR [--port 0] [--service ingest-1]
import tls from 'node:tls'
import { parseArgs } from 'node:util'
import { brokerTlsOptions } from './servers/tls-options.mjs'
import { Aedes } from 'aedes'

const { values } = parseArgs({ options: { home: { type: 'string' }, port: { type: 'string', default: '0' }, service: { type: 'string', default: 'ingest-1' } } })
if (values.home === undefined) { console.error('baseline-aedes: --home DIR is required'); process.exit(2) }
const SERVICE = values.service

const aedes = await Aedes.createBroker()
const cn = new WeakMap()

aedes.authenticate = (client, _username, _password, callback) => {
  const socket = client.conn
  const name = socket.authorized === true ? socket.getPeerCertificate()?.subject?.CN : undefined
  if (typeof name !== 'string' || name === '') {
    const err = new Error('no client certificate')
    err.returnCode = 5
    callback(err, false)
    return
  }
  cn.set(client, name)
  callback(null, true)
}

aedes.authorizePublish = (client, packet, callback) => {
  const name = client === null ? undefined : cn.get(client)
  if (name !== undefined && packet.topic.startsWith(`devices/${name}/`)) callback(null)
  else callback(new Error('publish not allowed'))
}

aedes.authorizeSubscribe = (client, sub, callback) => {
  const name = cn.get(client)
  const ok = name !== undefined && (sub.topic.startsWith(`devices/${name}/`) || (name === SERVICE && sub.topic === 'devices/+/telemetry'))
  callback(null, ok ? sub : null)
}

const server = tls.createServer(brokerTlsOptions(values.home), (socket) => {
  socket.setNoDelay(true)
  aedes.handle(socket)
})
server.on('tlsClientError', (_err, socket) => { socket.destroy() })
server.listen(Number(values.port), '127.0.0.1', () => {
  console.log(`listening on port ${server.address().port}`)
})
const stop = () => { server.close(); aedes.close(() => process.exit(0)) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
