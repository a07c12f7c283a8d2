"""Imported once by prepare's forkserver before it forks the workers.

Loading the families and the face models there means every worker starts with them (shared
copy-on-write) instead of loading its own copy: a pool, or a new pool after a worker crash,
then starts in milliseconds rather than seconds.
"""

try:
    from deepfake_moe.augment.registry import list_families

    list_families()
    from deepfake_moe.augment.faces import has_landmarks

    has_landmarks()
except Exception:  # noqa: BLE001 - a preload failure must not stop the server; workers load lazily
    pass
