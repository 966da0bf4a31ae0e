#!/usr/bin/env python3
"""PromptLedger example client in Python: commits a prompt version and fetches it back.

It proves that a stranger can implement the signing scheme from docs/api.md with standard
libraries: grpcio (stubs generated from proto/ by grpc_tools at run time) and `cryptography`
for Ed25519. It registers nothing: the actor (an author) must already exist.

Usage:
  client.py --endpoint 127.0.0.1:50051 --key-file alice.key --prompt support/greeting \
            --template 'Hello {{customer}}' --model gpt-4o --variables customer

Prints one JSON object: the commit receipt and the fetched prompt's reference.
"""
import argparse
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAYLOAD_TYPE = "application/vnd.promptledger.statement.v1+json"


def generate_stubs():
    """Compiles the .proto files into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="promptledger-stubs-")
    protos = ["promptledger/registry/v1/registry.proto", "promptledger/ledger/v1/ledger.proto"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         "--python_out", out, "--grpc_python_out", out] + protos,
        check=True,
    )
    sys.path.insert(0, out)
    from promptledger.registry.v1 import registry_pb2, registry_pb2_grpc
    from promptledger.ledger.v1 import ledger_pb2, ledger_pb2_grpc
    return registry_pb2, registry_pb2_grpc, ledger_pb2, ledger_pb2_grpc


class Actor:
    """An Ed25519 signer key in the C2SP signed-note encoding: PRIVATE+KEY+name+hash+base64."""

    def __init__(self, skey):
        parts = skey.strip().split("+")
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError("not a PRIVATE+KEY+<name>+<hash>+<base64> signer key")
        self.name = parts[2]
        raw = base64.b64decode(parts[4])
        if raw[0] != 1 or len(raw) != 33:
            raise ValueError("not an Ed25519 signer key")
        self.key = Ed25519PrivateKey.from_private_bytes(raw[1:])
        public = self.key.public_key().public_bytes_raw()
        key_hash = hashlib.sha256(self.name.encode() + b"\n" + b"\x01" + public).digest()[:4]
        if key_hash.hex() != parts[3]:
            raise ValueError("key hash does not match the key")
        self.keyid = f"{self.name}+{key_hash.hex()}"


def pae(payload_type, payload):
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def content_hash(template, model, parameters, variables):
    canonical = json.dumps(
        {"model": model, "parameters": parameters, "template": template, "variables": variables},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def sign(pb, actor, ledger_id, action):
    statement = {
        "ledger_id": ledger_id,
        "actor": actor.name,
        "issued_at_ms": int(time.time() * 1000),
        "nonce": secrets.token_hex(16),
        "action": action,
    }
    payload = json.dumps(statement).encode()
    sig = actor.key.sign(pae(PAYLOAD_TYPE, payload))
    return pb.SignedStatement(
        payload_type=PAYLOAD_TYPE, payload=payload,
        signatures=[pb.Signature(keyid=actor.keyid, sig=sig)],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--key-file", help="signer key file (or PROMPTLEDGER_KEY)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--model", default="gpt-4o")
    ap.add_argument("--variables", nargs="*", default=[])
    ap.add_argument("--message", default="committed from the Python example client")
    args = ap.parse_args()

    skey = os.environ.get("PROMPTLEDGER_KEY") or open(args.key_file).read()
    actor = Actor(skey)
    rpb, rgrpc, lpb, lgrpc = generate_stubs()
    channel = grpc.insecure_channel(args.endpoint)
    registry = rgrpc.RegistryServiceStub(channel)
    ledger = lgrpc.LedgerServiceStub(channel)

    # The ledger id is the last segment of the checkpoint origin (first line of the note).
    note = ledger.GetCheckpoint(lpb.GetCheckpointRequest()).checkpoint.decode()
    ledger_id = note.split("\n", 1)[0].rsplit("/", 1)[-1]

    # A read session: one signed open_session statement, then a bearer token.
    session = registry.CreateSession(rpb.CreateSessionRequest(
        statement=sign(rpb, actor, ledger_id, {"type": "open_session"})))
    auth = [("authorization", "Bearer " + session.token)]

    versions = registry.ListVersions(rpb.ListVersionsRequest(prompt=args.prompt, page_size=1000), metadata=auth)
    head = versions.versions[-1].version if versions.versions else None

    parameters = {"temperature": 0.2}
    action = {
        "type": "commit_version", "prompt": args.prompt, "parent_version": head,
        "template": args.template, "model": args.model, "parameters": parameters,
        "variables": args.variables, "message": args.message,
        "content_hash": content_hash(args.template, args.model, parameters, args.variables),
    }
    committed = registry.CommitVersion(rpb.CommitVersionRequest(statement=sign(rpb, actor, ledger_id, action)))

    fetched = registry.GetPrompt(
        rpb.GetPromptRequest(prompt=args.prompt, version=committed.version), metadata=auth)
    print(json.dumps({
        "sequence": committed.receipt.sequence,
        "version": committed.version,
        "content_hash": committed.content_hash,
        "local_content_hash": action["content_hash"],
        "template": fetched.template,
        "reference": {
            "prompt": fetched.reference.prompt,
            "version": fetched.reference.version,
            "content_hash": fetched.reference.content_hash,
        },
    }))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
