"""The descriptor pool that ortserve's generated messages live in.

A private pool, not protobuf's default one: ``tritonclient.grpc`` registers the same
``inference.*`` message names in the default pool, and both must import in one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
