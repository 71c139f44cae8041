"""A grpcio server for the interop test, with the same behaviour as the test's
tonic upstream, so the same assertions hold in both directions:

- PollService.GetPoll echoes `poll_id`; `owner_id` = the `x-interop-meta` request
  metadata; `question` = the caller identity the inbound sidecar forwarded
  (`x-tally-peer-spiffe-id`). Initial metadata `x-interop-server: python`, trailing
  metadata `x-interop-trailer: echo-<meta>`.
  `poll_id == "missing"` fails NOT_FOUND "no poll missing" with trailing metadata
  `x-interop-trailer: not-found`.
- EventFeedService.Subscribe streams offsets 1..from_offset, then OK. With
  `consumer == "fail-after-2"` it sends 2 messages, then fails RESOURCE_EXHAUSTED
  "stopped after 2" with trailing metadata `x-interop-trailer: stopped`.

(tonic cannot attach custom trailers to a successful unary answer, so only this
server sends `x-interop-trailer: echo-<meta>` there.)

Usage: server.py --stubs DIR   (prints "PORT <n>" once serving on 127.0.0.1)
"""

import argparse
import os
import signal
import sys
import threading
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stubs", required=True)
    args = parser.parse_args()
    stubs.load(args.stubs)

    import grpc
    from tally.events.v1 import events_pb2, feed_pb2, feed_pb2_grpc
    from tally.poll.v1 import poll_pb2, poll_pb2_grpc

    def meta(context, key):
        for k, v in context.invocation_metadata():
            if k == key:
                return v
        return ""

    class Polls(poll_pb2_grpc.PollServiceServicer):
        def GetPoll(self, request, context):
            if request.poll_id == "missing":
                context.set_trailing_metadata((("x-interop-trailer", "not-found"),))
                context.abort(grpc.StatusCode.NOT_FOUND, "no poll missing")
            m = meta(context, "x-interop-meta")
            context.send_initial_metadata((("x-interop-server", "python"),))
            context.set_trailing_metadata((("x-interop-trailer", "echo-" + m),))
            return poll_pb2.GetPollResponse(
                poll=poll_pb2.Poll(
                    poll_id=request.poll_id,
                    owner_id=m,
                    question=meta(context, "x-tally-peer-spiffe-id"),
                )
            )

    class Feed(feed_pb2_grpc.EventFeedServiceServicer):
        def Subscribe(self, request, context):
            context.send_initial_metadata((("x-interop-server", "python"),))
            for offset in range(1, request.from_offset + 1):
                if request.consumer == "fail-after-2" and offset > 2:
                    context.set_trailing_metadata((("x-interop-trailer", "stopped"),))
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stopped after 2")
                yield feed_pb2.SubscribeResponse(
                    offset=offset,
                    event=events_pb2.EventEnvelope(event_id=f"e-{offset}", aggregate_id=request.consumer),
                )

        def GetHead(self, request, context):
            return feed_pb2.GetHeadResponse(head_offset=0)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    poll_pb2_grpc.add_PollServiceServicer_to_server(Polls(), server)
    feed_pb2_grpc.add_EventFeedServiceServicer_to_server(Feed(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Bounded: the test stops us; never outlive it by more than ten minutes.
    stop.wait(600)
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
