"""Run records: atomic files and result tables (:mod:`.files`), the environment record
(:mod:`.environment`) and resumable chunked estimation (:mod:`.chunks`)."""

from .chunks import (
    CHUNK_COLUMNS,
    ChunkedEstimate,
    ChunkEstimator,
    RunConflict,
    RunSettings,
    estimate_in_chunks,
    remove_run_directory,
)
from .environment import environment_info
from .files import (
    atomic_path,
    check_table_path,
    check_writable_directory,
    chunk_directory_for,
    fingerprint_array,
    fingerprint_path,
    lock_path_for,
    metadata_path_for,
    output_lock,
    read_table,
    write_json,
    write_table,
    write_text,
)

__all__ = [
    "CHUNK_COLUMNS",
    "ChunkEstimator",
    "ChunkedEstimate",
    "RunConflict",
    "RunSettings",
    "atomic_path",
    "check_table_path",
    "check_writable_directory",
    "chunk_directory_for",
    "environment_info",
    "estimate_in_chunks",
    "fingerprint_array",
    "fingerprint_path",
    "lock_path_for",
    "metadata_path_for",
    "output_lock",
    "read_table",
    "remove_run_directory",
    "write_json",
    "write_table",
    "write_text",
]
