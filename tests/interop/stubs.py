"""Generates Python gRPC stubs from the repository's proto/ tree at test time.

The interop test runs this into a temporary directory, so no generated code is
committed and the stubs always match the protos under test.
"""

import os
import sys

PROTOS = [
    "tally/common/v1/common.proto",
    "tally/poll/v1/poll.proto",
    "tally/events/v1/events.proto",
    "tally/events/v1/feed.proto",
]


def load(out_dir: str) -> None:
    """Generates (once per directory) and puts the stubs on sys.path."""
    marker = os.path.join(out_dir, ".generated")
    if not os.path.exists(marker):
        import grpc_tools
        from grpc_tools import protoc

        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proto_root = os.path.join(repo, "proto")
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        os.makedirs(out_dir, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"grpc_tools.protoc failed for {PROTOS}")
        # Generated modules import each other as packages (tally.poll.v1...).
        for root, _dirs, _files in os.walk(os.path.join(out_dir, "tally")):
            init = os.path.join(root, "__init__.py")
            if not os.path.exists(init):
                open(init, "w").close()
        open(marker, "w").close()
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
