"""A backend talking to Rapport over gRPC, with nothing but the generated stubs (`rapport.orchestrator.v1`).

It starts (or resumes) a chat with a persona, sends one message and prints the reply frame by frame as it
streams, then reads the history and asks why the persona said what it said (the explain data). It acts
for one user of the deployment with a service key (docs/grpc.md):

    rapport keys create --service my-backend --scope chat          # prints rsk_… once
    python examples/grpc_client.py --key rsk_… --user <user UUID> --persona Kai "Hi! I live in Lisbon."

`--address` defaults to $RAPPORT_GRPC_ADDRESS or 127.0.0.1:50051 (what `rapport up` prints as "gRPC API");
`--ca FILE` speaks TLS and trusts that certificate authority (the public address of a deployment).
Exit code 0 when the turn streamed to its end, 1 on a gRPC error (its code and ErrorInfo are printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import grpc
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2

from rapport.orchestrator.v1 import orchestrator_pb2 as pb
from rapport.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc


def open_channel(address: str, ca_file: str | None) -> grpc.Channel:
    if ca_file:
        with open(ca_file, "rb") as ca:
            return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca.read()))
    return grpc.insecure_channel(address)


def chat_once(stub: pb_grpc.OrchestratorServiceStub, metadata: list[tuple[str, str]], persona: str, text: str) -> int:
    personas = stub.ListPersonas(pb.ListPersonasRequest(), metadata=metadata, timeout=10).personas
    chosen = next((p for p in personas if p.name.lower() == persona.lower()), None)
    if chosen is None:
        print(f"no persona {persona!r}; there are: {', '.join(p.name for p in personas)}", file=sys.stderr)
        return 1
    chat = stub.StartChat(pb.StartChatRequest(persona_id=chosen.id), metadata=metadata, timeout=10)
    print(f"session {chat.session_id} with {chat.persona_name} ({'new' if chat.is_new else 'resumed'})")

    # The turn: meta, delta…, done, final (or error, last). The same client_msg_id replays it.
    request = pb.SendMessageRequest(session_id=chat.session_id, content=text, client_msg_id=str(uuid.uuid4()))
    reply_id = ""
    print(f"you> {text}")
    for frame in stub.SendMessage(request, metadata=metadata, timeout=300):
        kind = frame.WhichOneof("frame")
        if kind == "meta":
            reply_id = frame.meta.message_id
            print(f"[meta] {frame.meta.action_type} by {frame.meta.model}")
            print(f"{chat.persona_name}> ", end="", flush=True)
        elif kind == "delta":
            print(frame.delta.content, end="", flush=True)
        elif kind == "done":
            print(f"\n[done] truncated={frame.done.truncated} usage={MessageToDict(frame.done.usage)}")
        elif kind == "final":
            print(f"[final] degraded={list(frame.final.degraded)} trace={frame.final.trace_id}")
        elif kind == "error":
            print(f"\n[error] {frame.error.code}: {frame.error.message}", file=sys.stderr)
            return 1

    history = stub.GetHistory(pb.GetHistoryRequest(session_id=chat.session_id), metadata=metadata, timeout=10)
    print(f"history: {history.total} messages")
    for message in history.messages[-2:]:
        print(f"  {message.role}: {message.content[:80]}")

    explained = stub.ExplainMessage(
        pb.ExplainMessageRequest(session_id=chat.session_id, message_id=reply_id), metadata=metadata, timeout=10
    )
    why = MessageToDict(explained.explanation)
    decision = why.get("decision", {})
    print(f"explain: {decision.get('action', '?')} ({decision.get('reason', '')}), model {why.get('model', '?')}")
    return 0


def describe(error: grpc.RpcError) -> str:
    """The status code, message and ErrorInfo (the error contract's `code`) of a failed call."""
    text = f"{error.code().name}: {error.details()}"
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    text += f" (code {info.reason})"
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    text += f" (retry in {retry.retry_delay.ToTimedelta().total_seconds():g} s)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat with a Rapport persona over gRPC, as a backend does.")
    parser.add_argument("message", nargs="?", default="Hi! I just moved to Lisbon.")
    parser.add_argument("--address", default=os.environ.get("RAPPORT_GRPC_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--key", default=os.environ.get("RAPPORT_SERVICE_KEY"), help="a service key (rsk_…)")
    parser.add_argument("--user", default=os.environ.get("RAPPORT_USER"), help="the UUID of the user to act for")
    parser.add_argument("--persona", default="Kai")
    parser.add_argument("--ca", help="PEM file of the CA to trust: speak TLS")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or RAPPORT_SERVICE_KEY) is required: `rapport keys create --service NAME --scope chat`")
    user = args.user or str(uuid.uuid4())
    metadata = [("authorization", f"Bearer {args.key}"), ("x-rapport-user", user)]
    with open_channel(args.address, args.ca) as channel:
        try:
            return chat_once(pb_grpc.OrchestratorServiceStub(channel), metadata, args.persona, args.message)
        except grpc.RpcError as error:
            print(f"rapport: {describe(error)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
