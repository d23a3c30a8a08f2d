"""Where a job may read and write: only inside the jobs folder (``--jobs-dir``).

A path is taken relative to the folder, or absolute if it lies inside it; it is resolved
(symlinks followed, ``..`` folded) before the check, so a link inside the folder that points
out of it is refused like a path outside. Without a jobs folder no path is accepted and only
uploaded inputs work. The check runs at submission (the gateway) and again where the file is
opened (the coordinator), since a link can change in between.
"""

from __future__ import annotations

from pathlib import Path

from modelgate.core.errors import Forbidden, InvalidInput

# The coordinator's own files (staged outputs) under the jobs folder; never a job's path.
STAGING = ".modelgate-jobs"


def confine(jobs_dir: Path | None, given: object, what: str) -> Path:
    """The resolved path ``given`` names inside ``jobs_dir``; raises Forbidden (outside it,
    through a symlink, or no jobs folder at all) or InvalidInput (not a path)."""
    if not isinstance(given, str) or not given or "\x00" in given:
        raise InvalidInput(f"{what} 'path' must be a non-empty string naming a file under the "
                           "server's jobs folder")
    if jobs_dir is None:
        raise Forbidden(f"{what} path {given!r} refused: this server has no jobs folder "
                        "(start it with --jobs-dir DIR to score files under DIR), so only "
                        "uploaded inputs work (POST /v2/jobs with the file as the body)")
    root = jobs_dir.resolve()
    candidate = Path(given)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise Forbidden(f"{what} path {given!r} refused: it resolves to {resolved}, outside "
                        f"the jobs folder {root} (paths are relative to it, or absolute inside "
                        "it; symlinks out of it are not followed)")
    if resolved == root or STAGING in resolved.relative_to(root).parts:
        raise Forbidden(f"{what} path {given!r} refused: name a file under {root}, not the "
                        f"folder itself or modelgate's own {STAGING} folder")
    return resolved


def relative(jobs_dir: Path, path: Path) -> str:
    """How a confined path is stored in the job record: relative to the jobs folder, so the
    record holds no host path."""
    return str(path.relative_to(jobs_dir.resolve()))


def staging_file(jobs_dir: Path, job_id: str, attempt: int) -> Path:
    return jobs_dir.resolve() / STAGING / f"{job_id}.{attempt}.jsonl"
