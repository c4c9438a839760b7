#!/bin/sh
# Regenerate the Python modules of the TF Serving wire protocol and of the Open
# Inference Protocol (grpc_service.proto) from this directory's .proto files
# (grpcio-tools, from the project's `test` extra).
# The generated *_pb2.py / *_pb2_grpc.py are checked in, so installing the
# project needs no code generation.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"
rm -f agent/serving/protos/*_pb2.py agent/serving/protos/*_pb2_grpc.py
python3 -m grpc_tools.protoc -I . \
    --python_out=. --grpc_python_out=. \
    agent/serving/protos/*.proto
# Only the service files define services; drop the empty grpc stubs of the rest.
for f in agent/serving/protos/*_pb2_grpc.py; do
    case "$f" in
        */model_service_pb2_grpc.py|*/prediction_service_pb2_grpc.py|*/grpc_service_pb2_grpc.py) ;;
        *) rm -f "$f" ;;
    esac
done
