"""Which collector to go back to: a health check of the earlier collectors in the agent's list."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import exfilguard_pb2 as pb

INGEST_SERVICE = pb.DESCRIPTOR.services_by_name["Ingest"].full_name  # what the check asks about
PROBE_SECONDS = 2.0  # how long one check waits for an answer


async def first_serving(
    addresses: Sequence[str], credentials: grpc.ChannelCredentials | None
) -> int | None:
    """Index of the first address whose health service says Ingest is SERVING, or None.

    A collector that is starting or stopping answers NOT_SERVING (or nothing): it is skipped,
    so an agent never moves to a collector that would refuse or drop it at once.
    """
    for index, address in enumerate(addresses):
        if credentials is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            channel = grpc.aio.secure_channel(address, credentials)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=INGEST_SERVICE), timeout=PROBE_SECONDS
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return index
        except grpc.aio.AioRpcError:
            continue  # down, or not serving yet
        finally:
            await channel.close(grace=None)
    return None
