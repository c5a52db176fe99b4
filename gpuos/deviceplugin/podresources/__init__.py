"""Generated gRPC/protobuf code; regenerate with tools/gen_proto.py."""
