"""naiad's protocol: `.proto` sources and the Python modules protoc generates from them.

The generated modules register their messages in POOL, a descriptor pool of naiad's own, not in
protobuf's default pool. tritonclient registers the same message names (package `inference`) in the
default pool, and two registrations of one name in one pool make the second import fail; with a pool
of its own, naiad can run in the same process as tritonclient (a test, or a Python model that calls
another Triton server). Regenerate with `python proto/generate.py` after editing a `.proto` file.
"""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
