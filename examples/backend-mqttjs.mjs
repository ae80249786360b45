// A backend on mqtt.js with a service certificate: ingest (read device telemetry and events) or send one command.
//
//   node examples/backend-mqttjs.mjs                              # ingest, as backend-1 (group ingest) of the dev home
//   ZT_ID=cmd-1 node examples/backend-mqttjs.mjs command sensor-1 reboot   # needs a service cert in group commands
//
// Settings (environment): MQTT_URL (default mqtts://localhost:8883), ZT_ID (default backend-1), and the files
// ZT_CA, ZT_CERT, ZT_KEY (default certs-dev/ca.pem, certs-dev/devices/<id>.pem, certs-dev/devices/<id>.key).
import { readFileSync } from 'node:fs'
import mqtt from 'mqtt'

const env = process.env
const id = env.ZT_ID ?? 'backend-1'
const home = env.AEDES_ZT_HOME ?? 'certs-dev'
const [mode = 'ingest', device, command = 'ping'] = process.argv.slice(2)

const client = mqtt.connect(env.MQTT_URL ?? 'mqtts://localhost:8883', {
  // Trust our root only; the broker's certificate names localhost, 127.0.0.1 and ::1 in the dev home.
  ca: readFileSync(env.ZT_CA ?? `${home}/ca.pem`),
  cert: readFileSync(env.ZT_CERT ?? `${home}/devices/${id}.pem`),
  key: readFileSync(env.ZT_KEY ?? `${home}/devices/${id}.key`),
  // The broker binds the client id to the certificate id; anything else is CONNACK 2.
  clientId: id,
  protocolVersion: 4,
  clean: true,
  reconnectPeriod: mode === 'ingest' ? 5000 : 0,
})

const CONNACK = { 2: 'client id is not the certificate id', 3: 'broker unavailable (revocations not current?)', 5: 'certificate refused (revoked, unknown, wrong kind)' }
client.on('error', (err) => {
  console.error(`backend ${id}: ${CONNACK[err.code] ?? err.message}`)
  if (err.code === 5 || err.code === 2) client.end(true) // retrying cannot help
})

client.on('connect', async () => {
  if (mode === 'command') {
    if (device === undefined) throw new Error('usage: backend-mqttjs.mjs command <device-id> [command]')
    // A publish the policy refuses is acknowledged and dropped (MQTT 3.1.1 has no negative ack): check with
    // `aedes-zt policy explain` or the broker's publish.denied log line.
    await client.publishAsync(`devices/${device}/commands/${command}`, JSON.stringify({ at: new Date().toISOString() }), { qos: 1 })
    console.log(`sent devices/${device}/commands/${command}`)
    await client.endAsync()
    return
  }
  // One SUBSCRIBE per filter, so a refusal (SUBACK 0x80, the connection stays) names its filter.
  for (const topic of ['devices/+/telemetry', 'devices/+/events/#']) {
    await client.subscribeAsync(topic, { qos: 1 }).then(
      (granted) => { console.log(`subscribed ${topic} qos ${granted[0]?.qos}`) },
      () => { console.log(`refused by policy: ${topic}`) },
    )
  }
})

client.on('message', (topic, payload) => {
  // devices/<id>/...: the device id is the second level, and the broker guarantees only <id> could publish there.
  console.log(`${topic} ${payload.toString('utf8')}`)
})

process.once('SIGINT', () => { client.end() })
process.once('SIGTERM', () => { client.end() })
