"""The feature store: webdataset tar shards of region features, a manifest, and two readers.

Layout of a store directory::

    manifest.json          backend + settings, feature dim, K, per-shard counts/bytes/sha256, failed images
    shard-000000.tar       webdataset shard: one sample per image
    shard-000000.json      the shard's sidecar: ids, byte offsets, checksum (written last: the shard's commit mark)
    index-hash.npy         sorted 64-bit hashes of all image ids       } random-access index, memory-mapped
    index-entries.npy      (hash2, shard, offset, size) per image        } by every reader process

A sample is three tar members sharing the key ``<key>`` — the image id, with ``%``, ``.`` and ``/`` (and other
characters outside ``[A-Za-z0-9_.~-]``) percent-encoded so that webdataset's ``key.extension`` split cannot break it:
``<key>.feats.npy`` (float16 ``[K, D]``), ``<key>.boxes.npy`` (float32 ``[K, 4]``, ``(x1, y1, x2, y2)`` divided by
image width/height) and ``<key>.json`` (``{"image_id", "width", "height", ...}`` plus detector labels if any).

Modules, one job each:

=================  ===============================================================================================
``format``         names, keys, tar members, sample encode/decode (bytes in, bytes out)
``writer``         :class:`ShardWriter` (one shard, committed atomically) and :func:`read_sidecar`
``index``          the memory-mapped random-access index: :func:`build_index`, lookups
``manifest``       :func:`make_plan`, :func:`load_manifest`, :func:`finalize_store`, :func:`store_lock`
``reader``         :class:`FeatureStore`: random access by image id
``stream``         :func:`stream`: the webdataset pipeline
``verify``         :func:`verify_store` (sizes, sha256, index) and :func:`reindex_store`
``remote``         :class:`~features.store.remote.HttpFiles`: a store read by URL (HTTP Range requests, retries)
``stage``          :func:`~features.store.stage.stage_store`: a remote store copied to local disk, verified
``serve``          :func:`~features.store.serve.make_server`: a store folder served with Range requests
``streamed``       :class:`~features.store.streamed.StreamedStore`: a store read front to back (``pipe:`` commands)
=================  ===============================================================================================

Both readers check shard sizes against the manifest and name the shard when one is truncated or corrupt.
"""

from __future__ import annotations

from features.store.format import FORMAT, FORMAT_VERSION, MANIFEST, decode_sample, encode_key, shard_name, sidecar_name
from features.store.index import build_index
from features.store.manifest import (
                                     extraction_record,
                                     finalize_store,
                                     load_manifest,
                                     make_plan,
                                     record_differences,
                                     store_fingerprint,
                                     store_lock,
)
from features.store.reader import FeatureStore
from features.store.stream import FeatureStream, stream
from features.store.streamed import StreamedStore, is_pipe, open_store, random_access
from features.store.verify import reindex_store, verify_store
from features.store.writer import ShardWriter, read_sidecar

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "FeatureStore",
    "FeatureStream",
    "ShardWriter",
    "StreamedStore",
    "build_index",
    "decode_sample",
    "encode_key",
    "extraction_record",
    "finalize_store",
    "is_pipe",
    "load_manifest",
    "make_plan",
    "open_store",
    "random_access",
    "read_sidecar",
    "record_differences",
    "reindex_store",
    "shard_name",
    "sidecar_name",
    "store_fingerprint",
    "store_lock",
    "stream",
    "verify_store",
]
