"""Run records: atomic files and result tables (:mod:`.files`), the environment record
(:mod:`.environment`), resumable chunked estimation (:mod:`.chunks`) and the processes of a
launched job (:mod:`.distributed`)."""

from .chunks import (
    CHUNK_COLUMNS,
    ChunkedEstimate,
    ChunkedRun,
    ChunkEstimator,
    RunConflict,
    RunSettings,
    estimate_in_chunks,
    open_chunked_run,
    remove_run_directory,
)
from .distributed import RankFailed, RankGroup, detect_launch, rank_group
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
    "ChunkedRun",
    "RankFailed",
    "RankGroup",
    "RunConflict",
    "RunSettings",
    "atomic_path",
    "check_table_path",
    "check_writable_directory",
    "chunk_directory_for",
    "detect_launch",
    "environment_info",
    "estimate_in_chunks",
    "fingerprint_array",
    "fingerprint_path",
    "lock_path_for",
    "metadata_path_for",
    "open_chunked_run",
    "output_lock",
    "rank_group",
    "read_table",
    "remove_run_directory",
    "write_json",
    "write_table",
    "write_text",
]
