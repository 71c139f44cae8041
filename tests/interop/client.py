"""A grpcio client for the interop test. Calls a target (a Tally outbound sidecar)
with `:authority` set to the service name the sidecar routes on, runs four
scenarios and prints one JSON object with everything observed:

- unary_ok: GetPoll("p-1") with metadata x-interop-meta=hello;
- unary_error: GetPoll("missing");
- stream_ok: Subscribe(from_offset=5);
- stream_error: Subscribe(from_offset=5, consumer="fail-after-2").

Usage: client.py --stubs DIR --target 127.0.0.1:PORT --authority echo
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

TIMEOUT_S = 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--authority", required=True)
    args = parser.parse_args()
    stubs.load(args.stubs)

    import grpc
    from tally.events.v1 import feed_pb2, feed_pb2_grpc
    from tally.poll.v1 import poll_pb2, poll_pb2_grpc

    def md(pairs):
        return {k: v for k, v in (pairs or ()) if not k.startswith("grpc-")}

    channel = grpc.insecure_channel(args.target, options=[("grpc.default_authority", args.authority)])
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    polls = poll_pb2_grpc.PollServiceStub(channel)
    feed = feed_pb2_grpc.EventFeedServiceStub(channel)
    out = {}

    rsp, call = polls.GetPoll.with_call(
        poll_pb2.GetPollRequest(poll_id="p-1"),
        metadata=(("x-interop-meta", "hello"),),
        timeout=TIMEOUT_S,
    )
    out["unary_ok"] = {
        "code": call.code().name,
        "poll_id": rsp.poll.poll_id,
        "owner_id": rsp.poll.owner_id,
        "peer": rsp.poll.question,
        "initial": md(call.initial_metadata()),
        "trailing": md(call.trailing_metadata()),
    }

    try:
        polls.GetPoll(poll_pb2.GetPollRequest(poll_id="missing"), timeout=TIMEOUT_S)
        out["unary_error"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["unary_error"] = {
            "code": e.code().name,
            "details": e.details(),
            "trailing": md(e.trailing_metadata()),
        }

    def stream(consumer):
        call = feed.Subscribe(feed_pb2.SubscribeRequest(from_offset=5, consumer=consumer), timeout=TIMEOUT_S)
        offsets = []
        result = {}
        try:
            for item in call:
                offsets.append(item.offset)
            result["code"] = call.code().name
        except grpc.RpcError as e:
            result["code"] = e.code().name
            result["details"] = e.details()
            result["trailing"] = md(e.trailing_metadata())
        result["offsets"] = offsets
        result["initial"] = md(call.initial_metadata())
        return result

    out["stream_ok"] = stream("plain")
    out["stream_error"] = stream("fail-after-2")
    channel.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
