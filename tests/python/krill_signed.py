#!/usr/bin/env python3
"""A Krill submitter in Python (PyNaCl + pika), no Rust involved: makes a
krill-key-v1 key file, then submits a task signed with it whose secret is
sealed to the pool's key, waits for the result and opens its sealed outputs.
It follows the wire format in the README ("Signed tasks and sealed secrets").

  krill_signed.py keygen KEYFILE NAME          prints the trusted-keys line
  krill_signed.py submit URL POOL POOL_PUBLIC_KEY KEYFILE SECRET SCRIPT
                                               prints the result as JSON, with
                                               "opened": {name: value} for sealed outputs
"""
import base64
import hashlib
import json
import sys
import time
import uuid

import nacl.public
import nacl.signing
import pika


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def keygen(path: str, name: str) -> None:
    sk = nacl.signing.SigningKey.generate()
    rk = nacl.public.PrivateKey.generate()
    key = {"type": "krill-key-v1", "name": name,
           "ed25519": b64(bytes(sk)), "x25519": b64(bytes(rk))}
    with open(path, "w") as f:
        json.dump(key, f)
    print(f"ed25519 {b64(bytes(sk.verify_key))} {name}")


def submit(url, pool, pool_public, keyfile, secret, script) -> None:
    key = json.load(open(keyfile))
    sk = nacl.signing.SigningKey(base64.b64decode(key["ed25519"]))
    rk = nacl.public.PrivateKey(base64.b64decode(key["x25519"]))
    signer = b64(bytes(sk.verify_key))
    pool_pk = nacl.public.PublicKey(base64.b64decode(pool_public))

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    reply_to = ch.queue_declare("", exclusive=True).method.queue

    # The secret, sealed to the pool and bound to its name and to the signer.
    plain = b"krill-secret-v1\nAPI_KEY\n" + signer.encode() + b"\n" + secret.encode()
    task_id = str(uuid.uuid4())
    task = {"version": 1, "id": task_id, "script": script,
            "secrets": {"API_KEY": {"sealed": b64(nacl.public.SealedBox(pool_pk).encrypt(plain))}},
            "reply_key": b64(bytes(rk.public_key))}
    body = json.dumps(task).encode()
    not_after = int(time.time()) + 3600
    signed = (f"krill-task-v1\n{signer}\n{pool}\n{reply_to}\n{not_after}\n"
              f"{hashlib.sha256(body).hexdigest()}\n").encode()
    headers = {"x-krill-key": signer,
               "x-krill-signature": b64(sk.sign(signed).signature),
               "x-krill-not-after": str(not_after)}
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                 message_id=task_id, correlation_id=task_id,
                                 reply_to=reply_to, headers=headers)
    ch.basic_publish("krill.tasks", pool, body, props, mandatory=True)

    deadline = time.time() + 60
    while time.time() < deadline:
        method, _, data = ch.basic_get(reply_to, auto_ack=True)
        if method is None:
            conn.process_data_events(time_limit=0.1)
            continue
        result = json.loads(data)
        if result.get("id") != task_id:
            continue
        opened = {}
        for o in result.get("outputs", []):
            if o.get("sealed"):
                box = nacl.public.SealedBox(rk)
                opened[o["name"]] = box.decrypt(base64.b64decode(o["sealed"])).decode()
        result["opened"] = opened
        print(json.dumps(result))
        conn.close()
        return
    sys.exit("no result within 60 s")


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        keygen(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "submit":
        submit(*sys.argv[2:8])
    else:
        sys.exit(__doc__)
