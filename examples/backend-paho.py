#!/usr/bin/env python3
"""An ingest backend on paho-mqtt (2.x) with a service certificate: reads device telemetry and events.

Not run by the test suite (paho-mqtt is not installed where the tests run); it mirrors
examples/backend-mqttjs.mjs, which is tested. Install with `pip install "paho-mqtt>=2"`.

    python3 examples/backend-paho.py        # as backend-1 (group ingest) of the dev home made by `npm start`

Settings (environment): MQTT_HOST (default localhost), MQTT_PORT (default 8883), ZT_ID (default backend-1),
ZT_CA, ZT_CERT, ZT_KEY (default certs-dev/ca.pem, certs-dev/devices/<id>.pem, certs-dev/devices/<id>.key).
"""
import os
import ssl
import sys

import paho.mqtt.client as mqtt

home = os.environ.get("AEDES_ZT_HOME", "certs-dev")
client_id = os.environ.get("ZT_ID", "backend-1")
host = os.environ.get("MQTT_HOST", "localhost")
port = int(os.environ.get("MQTT_PORT", "8883"))

# MQTT 3.1.1: the broker (Aedes) refuses MQTT 5. The client id must be the certificate id.
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
client.tls_set(
    ca_certs=os.environ.get("ZT_CA", f"{home}/ca.pem"),
    certfile=os.environ.get("ZT_CERT", f"{home}/devices/{client_id}.pem"),
    keyfile=os.environ.get("ZT_KEY", f"{home}/devices/{client_id}.key"),
    cert_reqs=ssl.CERT_REQUIRED,
    tls_version=ssl.PROTOCOL_TLS_CLIENT,
)


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        # 2: client id is not the certificate id; 5: certificate refused (revoked, unknown, wrong kind).
        print(f"backend {client_id}: connect refused: {reason_code}", file=sys.stderr)
        client.disconnect()
        return
    client.subscribe([("devices/+/telemetry", 1), ("devices/+/events/#", 1)])


def on_subscribe(client, userdata, mid, reason_codes, properties):
    for rc in reason_codes:
        # 0x80: the policy does not allow this filter for this identity; the connection stays.
        print("refused by policy" if rc.is_failure else f"subscribed qos {rc.value}")


def on_message(client, userdata, msg):
    print(f"{msg.topic} {msg.payload.decode('utf-8', 'replace')}")


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port, keepalive=60)
try:
    client.loop_forever()
except KeyboardInterrupt:
    client.disconnect()
