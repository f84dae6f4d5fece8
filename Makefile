.PHONY: run test bench stubs lint clean

# Install everything and run a collector plus a local agent on the embedded default.
run:
	scripts/bootstrap
	scripts/quickstart

# The whole test suite: ruff, mypy --strict, pytest (real gRPC, processes, loop devices, udev).
test:
	scripts/test

bench:
	scripts/bootstrap
	.venv/bin/python -m bench

# Regenerate the protobuf and gRPC stubs (and their type stubs) from protos/exfilguard.proto.
stubs:
	PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/python -m grpc_tools.protoc -I . \
	  --python_out=. --pyi_out=. --grpc_python_out=. --mypy_grpc_out=. protos/exfilguard.proto

lint:
	.venv/bin/ruff check . && .venv/bin/mypy

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache .pytest_cache
